package volume

import (
	"maps"
	"testing"
)

func TestWithPVName(t *testing.T) {
	for _, tc := range []struct {
		name       string
		vc, params map[string]string
		want       map[string]string
	}{
		{"echoed", map[string]string{CtxFsType: "ext4"}, map[string]string{CtxPVName: "pvc-1", "csi.storage.k8s.io/pvc/name": "data"},
			map[string]string{CtxFsType: "ext4", CtxPVName: "pvc-1"}},
		{"absent", map[string]string{CtxFsType: "ext4"}, map[string]string{"pool": "rbd"}, map[string]string{CtxFsType: "ext4"}},
		{"nil context", nil, map[string]string{CtxPVName: "pvc-2"}, map[string]string{CtxPVName: "pvc-2"}},
	} {
		if got := WithPVName(tc.vc, tc.params); !maps.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
