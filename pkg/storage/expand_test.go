package storage

import (
	"context"
	"errors"
	"testing"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/exclusivelock"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
)

// TestLocalExpandImage: on the local backend, an image nobody serves grows
// directly; one whose lock owner answers is grown by that owner (the
// proxied resize); shrinking and missing images are refused with the
// errors callers branch on.
func TestLocalExpandImage(t *testing.T) {
	ctx := context.Background()
	b, pool := openTestImage(t, "vol", 64<<20)
	size := func() int64 {
		info, err := b.ImageInfo(ctx, pool, "vol")
		if err != nil {
			t.Fatal(err)
		}
		return info.Size
	}

	// Nobody serves it: grown here.
	if err := b.ExpandImage(ctx, pool, "vol", 96<<20); err != nil {
		t.Fatal(err)
	}
	if s := size(); s != 96<<20 {
		t.Fatalf("size %d after expanding to 96 MiB", s)
	}
	if err := b.ExpandImage(ctx, pool, "vol", 96<<20); err != nil {
		t.Fatalf("expand to the same size: %v", err)
	}
	if err := b.ExpandImage(ctx, pool, "vol", 32<<20); !errors.Is(err, ErrShrink) || !errors.Is(err, image.ErrInvalid) {
		t.Fatalf("shrink: %v, want ErrShrink and image.ErrInvalid", err)
	}
	if err := b.ExpandImage(ctx, pool, "nope", 32<<20); !errors.Is(err, image.ErrNotFound) {
		t.Fatalf("missing image: %v, want image.ErrNotFound", err)
	}

	// An owner answers: it performs the resize (here a stand-in that
	// records the size and grows the header as the device would).
	img, err := image.Open(ctx, pool, "vol")
	if err != nil {
		t.Fatal(err)
	}
	var asked uint64
	l, err := exclusivelock.Acquire(ctx, pool, clsrbd.HeaderOID(img.ID()), exclusivelock.Options{
		Resize: func(ctx context.Context, s uint64, allowShrink bool) error {
			asked = s
			return image.Resize(ctx, pool, "vol", int64(s))
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	start := time.Now()
	if err := b.ExpandImage(ctx, pool, "vol", 128<<20); err != nil {
		t.Fatal(err)
	}
	t.Logf("proxied expansion took %v", time.Since(start).Round(time.Millisecond))
	if asked != 128<<20 || size() != 128<<20 {
		t.Fatalf("owner asked for %d, image has %d; want 128 MiB both", asked, size())
	}
}
