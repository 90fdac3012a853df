//go:build ceph && pacific

package blockdev

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/ceph/cephtest"
	"github.com/csi-rbdj/csi-rbdj/pkg/testproc"
)

// metaCephExtent is the i-th write of the Ceph metadata-mode writer: one
// after the other, never overlapping.
func metaCephExtent(i int) (off int64, data []byte) {
	r := rand.New(rand.NewPCG(uint64(i), 18))
	data = make([]byte, 4096*(1+r.IntN(16)))
	for j := range data {
		data[j] = byte(r.Uint32())
	}
	return int64(i) * 65536, data
}

// TestMetadataCephWriterProcess serves a metadata-mode device on Ceph and
// writes metaCephExtent(0), (1), ... printing "ACK i" once each write
// returned, until it is killed.
func TestMetadataCephWriterProcess(t *testing.T) {
	conf, name := os.Getenv("METACEPH_CONF"), os.Getenv("METACEPH_IMAGE")
	if conf == "" {
		t.Skip("helper process of TestMetadataModeCrashCeph")
	}
	ctx := context.Background()
	pool, c := connectCeph(t, conf)
	d, err := Open(ctx, pool, name, Options{JournalMode: JournalMetadata, Fencer: c})
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(3)
	}
	fmt.Printf("OWNER %s\n", d.Owner().Addr)
	for i := 0; ; i++ {
		off, data := metaCephExtent(i)
		if off+int64(len(data)) > d.Size() {
			select {}
		}
		if _, err := d.WriteAt(ctx, data, off); err != nil {
			fmt.Printf("ERROR %v\n", err)
			os.Exit(3)
		}
		fmt.Printf("ACK %d\n", i)
	}
}

// TestMetadataModeCrashCeph: a metadata-mode device on Ceph is SIGKILLed
// while it writes; the next owner (fencing the dead one) finds no torn
// extent, every acknowledged write reads back (through our device and
// through librbd: `rbd export`), and the extent log's changed extents
// cover every acknowledged write. The image has no librbd journal.
func TestMetadataModeCrashCeph(t *testing.T) {
	conf := cephtest.Conf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := fmt.Sprintf("metamode-%d", time.Now().UnixNano())
	spec := cephtest.PoolName + "/" + name
	if out, err := rbdCLI(ctx, conf, "create", "--size", "128M", "--image-feature", "layering,exclusive-lock", spec); err != nil {
		t.Fatalf("rbd create: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pool, _ := connectCeph(t, conf)
		img, err := image.Open(ctx, pool, name)
		if out, err := rbdCLI(ctx, conf, "rm", "--no-progress", spec); err != nil {
			t.Logf("rbd rm %s: %v\n%s", name, err, out)
		}
		if err == nil {
			if err := extentlog.Remove(ctx, pool, img.ID()); err != nil {
				t.Logf("remove extent log: %v", err)
			}
		}
	})
	pool, c := connectCeph(t, conf)
	// The first open creates the log; a consumer then keeps it.
	d, err := Open(ctx, pool, name, Options{JournalMode: JournalMetadata, Fencer: c})
	if err != nil {
		t.Fatal(err)
	}
	id := d.img.ID()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := extentlog.RegisterConsumer(ctx, pool, id, "backup"); err != nil {
		t.Fatal(err)
	}

	child := testproc.Start(t, testproc.Command("^TestMetadataCephWriterProcess$", "METACEPH_CONF="+conf, "METACEPH_IMAGE="+name))
	sc := bufio.NewScanner(child.Stdout)
	var owner string
	acked := -1
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "OWNER":
			owner = f[1]
		case len(f) == 2 && f[0] == "ACK":
			acked, _ = strconv.Atoi(f[1])
		case len(f) > 0 && f[0] == "ERROR":
			t.Fatalf("writer: %s", sc.Text())
		}
		if acked >= 300 {
			break
		}
	}
	child.Kill()
	if owner == "" || acked < 300 {
		t.Fatalf("writer stopped early: owner %q, %d acknowledged", owner, acked)
	}
	t.Cleanup(func() { _ = c.Unblocklist(context.Background(), owner) })

	d, err = Open(ctx, pool, name, Options{JournalMode: JournalMetadata, Fencer: c, DeadOwners: []string{owner}})
	if err != nil {
		t.Fatal(err)
	}
	st := d.MetadataReplayStats()
	if st.TornExtents != 0 {
		t.Errorf("torn extents after the kill: %+v", st)
	}
	for i := 0; i <= acked; i++ {
		off, data := metaCephExtent(i)
		got := make([]byte, len(data))
		if _, err := d.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("acknowledged write %d (%d+%d) lost", i, off, len(data))
		}
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// librbd reads the data in place.
	export := filepath.Join(t.TempDir(), "export")
	if out, err := rbdCLI(ctx, conf, "export", "--no-progress", spec, export); err != nil {
		t.Fatalf("rbd export: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(export)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= acked; i++ {
		off, data := metaCephExtent(i)
		if !bytes.Equal(raw[off:off+int64(len(data))], data) {
			t.Fatalf("rbd export: write %d differs", i)
		}
	}
	if out, err := rbdCLI(ctx, conf, "info", spec); err != nil || strings.Contains(out, "journaling") {
		t.Errorf("rbd info: %v\n%s", err, out)
	}
	if out, err := rbdCLI(ctx, conf, "journal", "info", "--image", spec); err == nil {
		t.Errorf("rbd journal info found a librbd journal:\n%s", out)
	}

	ch, err := extentlog.ChangedExtents(ctx, pool, id, "backup", extentlog.Position{}, extentlog.Position{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= acked; i++ {
		off, data := metaCephExtent(i)
		if !covered(ch.Extents, uint64(off), uint64(len(data))) {
			t.Fatalf("acknowledged write %d (%d+%d) not among the changed extents", i, off, len(data))
		}
	}
	t.Logf("%d acknowledged writes before SIGKILL; replay checked %d entries (%d torn); %d changed entries listed up to %v",
		acked+1, st.Checked, st.TornExtents, len(ch.Entries), ch.Last)
}

func covered(ext []extentlog.Extent, off, n uint64) bool {
	for _, e := range ext {
		if e.Offset <= off && off+n <= e.Offset+e.Length {
			return true
		}
	}
	return false
}
