package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/cephenc"
	"github.com/csi-rbdj/csi-rbdj/pkg/extentlog"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/rbdjournal"
	"github.com/csi-rbdj/csi-rbdj/pkg/volume"
)

const journalUsage = `Usage: csi-rbdj journal COMMAND --volume ID [flags]

Commands on the extent log of a journalMode metadata volume (README "Journal
modes"; the log keeps what a registered consumer has not passed):

  register-consumer   --consumer NAME       retain the log for NAME from now on
  changed-extents     --consumer NAME [--from TAG:ENTRY] [--to TAG:ENTRY]
                      print (JSON) the extents changed in (from, to]; "last"
                      is where the next incremental listing starts;
                      or --to-snap NAME [--from-snap NAME]: between the
                      creations of two snapshots
  advance-consumer    --consumer NAME --to TAG:ENTRY
                      let the log drop what NAME has copied, up to --to
  unregister-consumer --consumer NAME

Backend flags as for "csi-rbdj serve" (--backend, --local-dir, --ceph-config,
--ceph-credentials-dir, ...).
`

// changedExtentsOutput is what changed-extents prints.
type changedExtentsOutput struct {
	Volume  string             `json:"volume"`
	From    string             `json:"from"`
	To      string             `json:"to,omitempty"`
	First   string             `json:"first"`
	Last    string             `json:"last"`
	Entries int                `json:"entries"`
	Bytes   uint64             `json:"bytes"`
	Extents []extentlog.Extent `json:"extents"`
	// Ops are the management operations logged in the range (a resize
	// tells a backup the new size).
	Ops []opOutput `json:"ops,omitempty"`
}

type opOutput struct {
	Position string `json:"position"`
	Event    string `json:"event"`
	Size     uint64 `json:"size,omitempty"` // resize
}

func journalMain(args []string) error {
	if len(args) < 1 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, journalUsage)
		return nil
	}
	cmd := args[0]
	fs := flag.NewFlagSet("journal "+cmd, flag.ExitOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, journalUsage); fs.PrintDefaults() }
	var c serveConfig
	serveFlags(fs, &c)
	volID := fs.String("volume", "", "the volume id (a PersistentVolume's spec.csi.volumeHandle)")
	consumer := fs.String("consumer", "", "the consumer name (e.g. the backup tool's)")
	fromS := fs.String("from", "", "list changes after this position (TAG:ENTRY; empty: from the oldest retained)")
	toS := fs.String("to", "", "list changes up to and including this position (TAG:ENTRY; empty: all)")
	fromSnap := fs.String("from-snap", "", "changed-extents: list changes after the creation of this snapshot (with --to-snap)")
	toSnap := fs.String("to-snap", "", "changed-extents: list changes up to the creation of this snapshot")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound of the whole command")
	if err := parseArgs(fs, args[1:]); err != nil {
		return err
	}
	from, err := extentlog.ParsePosition(*fromS)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	to, err := extentlog.ParsePosition(*toS)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	switch {
	case *volID == "":
		return errors.New("--volume is required")
	case *consumer == "":
		return errors.New("--consumer is required (register one with: csi-rbdj journal register-consumer)")
	case cmd == "advance-consumer" && *toS == "":
		return errors.New("--to is required: the position the consumer has copied up to")
	case (*fromSnap != "" || *toSnap != "") && (*fromS != "" || *toS != ""):
		return errors.New("give positions (--from, --to) or snapshots (--from-snap, --to-snap), not both")
	case *fromSnap != "" && *toSnap == "":
		return errors.New("--from-snap needs --to-snap")
	}
	vid, err := volume.ParseVolumeID(*volID)
	if err != nil {
		return fmt.Errorf("--volume: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	b, err := openBackend(ctx, c)
	if err != nil {
		return err
	}
	defer b.Close()
	st, err := b.Storage(ctx, vid.Cluster, nil)
	if err != nil {
		return err
	}
	pool, err := st.Pool(ctx, vid.Pool)
	if err != nil {
		return err
	}
	info, err := st.ImageInfo(ctx, pool, vid.Image)
	if err != nil {
		return fmt.Errorf("volume %s: %w", vid, err)
	}
	if err := requireExtentLog(ctx, pool, info.ID, vid); err != nil {
		return err
	}
	switch cmd {
	case "register-consumer":
		return extentlog.RegisterConsumer(ctx, pool, info.ID, *consumer)
	case "unregister-consumer":
		return extentlog.UnregisterConsumer(ctx, pool, info.ID, *consumer)
	case "advance-consumer":
		return extentlog.AdvanceConsumer(ctx, pool, info.ID, *consumer, to)
	case "changed-extents":
		var ch extentlog.Changes
		if *toSnap != "" {
			ch, err = extentlog.ChangedBetweenSnapshots(ctx, pool, info.ID, *consumer, *fromSnap, *toSnap)
		} else {
			ch, err = extentlog.ChangedExtents(ctx, pool, info.ID, *consumer, from, to)
		}
		if err != nil {
			return err
		}
		out := changedExtentsOutput{Volume: vid.String(), From: from.String(), First: ch.First.String(), Last: ch.Last.String(),
			Entries: len(ch.Entries), Extents: ch.Extents}
		if to != (extentlog.Position{}) {
			out.To = to.String()
		}
		if out.Extents == nil {
			out.Extents = []extentlog.Extent{}
		}
		for _, e := range ch.Extents {
			out.Bytes += e.Length
		}
		for _, op := range ch.Ops {
			o := opOutput{Position: op.Position.String(), Event: "unknown"}
			var ev rbdjournal.EventEntry
			if err := cephenc.Unmarshal(op.Entry.Op, &ev); err == nil {
				o.Event = ev.Event.Type().String()
				if r, ok := ev.Event.(rbdjournal.ResizeEvent); ok {
					o.Size = r.Size
				}
			}
			out.Ops = append(out.Ops, o)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	return fmt.Errorf("unknown journal command %q (want register-consumer, changed-extents, advance-consumer or unregister-consumer)", cmd)
}

// requireExtentLog refuses volumes without an extent log.
func requireExtentLog(ctx context.Context, pool objstore.Pool, imageID string, vid volume.VolumeID) error {
	ok, err := extentlog.Exists(ctx, pool, imageID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("volume %s has no extent log: it is not a journalMode metadata volume, or it was never staged", vid)
	}
	return nil
}
