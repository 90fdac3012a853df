package driver

import "testing"

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/csi/csi.sock": "/run/csi/csi.sock",
		"unix:/run/csi/csi.sock":   "/run/csi/csi.sock",
		"/run/csi/csi.sock":        "/run/csi/csi.sock",
	} {
		if got, err := ParseEndpoint(in); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseEndpoint("tcp://127.0.0.1:10000"); err == nil {
		t.Error("tcp endpoints must be refused")
	}
}
