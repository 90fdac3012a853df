package charts

import (
	"testing"

	storagev1 "k8s.io/api/storage/v1"
)

// TestStorageClassJournalMode: storageClass.journalMode reaches the
// StorageClass as the journalMode parameter, is omitted when empty, and
// the schema accepts only the driver's modes.
func TestStorageClassJournalMode(t *testing.T) {
	for _, tc := range []struct {
		set  string
		want string
		ok   bool
	}{
		{"", "", true},
		{"storageClass.journalMode=metadata", "metadata", true},
		{"storageClass.journalMode=full", "full", true},
		{"storageClass.journalMode=ordered", "", false},
	} {
		args := []string{"-f", "testdata/local.yaml"}
		if tc.set != "" {
			args = append(args, "--set", tc.set)
		}
		if !tc.ok {
			if _, err := helm(t, append([]string{"template", "rbdj", chartDir}, args...)...); err == nil {
				t.Errorf("--set %s accepted", tc.set)
			}
			continue
		}
		sc := one[*storagev1.StorageClass](t, render(t, args...))
		got, has := sc.Parameters["journalMode"]
		if got != tc.want || has != (tc.want != "") {
			t.Errorf("--set %q: journalMode parameter %q (present %v), want %q", tc.set, got, has, tc.want)
		}
	}
}
