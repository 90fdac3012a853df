//go:build linux

package fuseloop

import (
	"testing"
	"time"
)

func TestTrackerOldest(t *testing.T) {
	var tr tracker
	tr.init()
	if o, _, n := tr.oldest(time.Now()); o != nil || n != 0 {
		t.Fatalf("empty tracker: %v %d", o, n)
	}
	a := tr.add(opWrite, 0, 4096)
	time.Sleep(2 * time.Millisecond)
	b := tr.add(opRead, 4096, 512)
	c := tr.add(opFlush, 0, 0)
	o, age, n := tr.oldest(time.Now())
	if o.kind != opWrite || n != 3 || age < 2*time.Millisecond {
		t.Fatalf("oldest = %+v age %s n %d", o, age, n)
	}
	tr.remove(a)
	if o, _, n := tr.oldest(time.Now()); o.kind != opRead || o.off != 4096 || n != 2 {
		t.Fatalf("after removing the oldest: %+v %d", o, n)
	}
	tr.remove(c)
	tr.remove(b)
	if o, _, n := tr.oldest(time.Now()); o != nil || n != 0 || tr.count() != 0 {
		t.Fatalf("after removing all: %+v %d", o, n)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:         "/a/b",
		`/a\040b`:      "/a b",
		`/x\011y\134z`: "/x\ty\\z",
		`/trailing\04`: `/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", "x\x00"} {
		if validName(n) == nil {
			t.Errorf("validName(%q) accepted", n)
		}
	}
	for _, n := range []string{"pvc-1234", "0001-0009-rbd-abc"} {
		if err := validName(n); err != nil {
			t.Errorf("validName(%q): %v", n, err)
		}
	}
}

func TestConnID(t *testing.T) {
	if got := (&mountInfo{major: 0, minor: 40}).connID(); got != 40 {
		t.Errorf("connID 0:40 = %d", got)
	}
	if got := (&mountInfo{major: 0, minor: 300}).connID(); got != 300 {
		t.Errorf("connID 0:300 = %d", got)
	}
}
