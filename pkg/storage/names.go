package storage

import "fmt"

// ValidateName accepts the names this driver puts into ids: non-empty,
// printable ASCII without '/', '@' or spaces (Ceph forbids '/' and '@' in
// image names; pools and cluster ids follow the same rule here).
func ValidateName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(s) > 64 {
		return fmt.Errorf("%s %q longer than 64 bytes", what, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == '@' {
			return fmt.Errorf("%s %q: character %q not allowed", what, s, c)
		}
	}
	return nil
}
