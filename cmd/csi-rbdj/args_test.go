package main

import (
	"flag"
	"io"
	"testing"
)

// TestParseArgs: a subcommand's flags parse; a positional argument (a flag
// value gone astray) is an error, not ignored.
func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr bool
	}{
		{nil, false},
		{[]string{"--state-dir", "/x"}, false},
		{[]string{"--state-dir=/x", "extra"}, true},
		{[]string{"extra", "--state-dir", "/x"}, true},
		{[]string{"--no-such-flag"}, true},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		dir := fs.String("state-dir", "", "")
		err := parseArgs(fs, tc.args)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: %v, want error %v", tc.args, err, tc.wantErr)
		}
		if err == nil && len(tc.args) > 0 && *dir != "/x" {
			t.Errorf("%q: --state-dir %q", tc.args, *dir)
		}
	}
}
