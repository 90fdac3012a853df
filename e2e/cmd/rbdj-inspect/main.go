// Command rbdj-inspect reads a local-backend cluster directory for the e2e checks
// (the local backend's counterpart of `rbd info` and `rados ls`). It opens the
// directory as one more client, next to the driver's running processes.
//
//	rbdj-inspect --dir DIR --pool rbd image NAME    JSON: the image, its features and journal objects
//	rbdj-inspect --dir DIR --pool rbd objects STR.. the pool's objects whose names contain any STR
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	clsrbd "github.com/csi-rbdj/csi-rbdj/pkg/cls/rbd"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/journal"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore"
	"github.com/csi-rbdj/csi-rbdj/pkg/storage"
)

// imageReport is what `image` prints.
type imageReport struct {
	Name              string   `json:"name"`
	ID                string   `json:"id"`
	Size              int64    `json:"size"`
	Order             uint8    `json:"order"`
	Features          []string `json:"features"`
	JournalOrder      uint8    `json:"journalOrder"`
	JournalSplayWidth uint8    `json:"journalSplayWidth"`
	JournalHeader     string   `json:"journalHeader"`
	JournalObjects    []string `json:"journalObjects"`
	DataObjects       int      `json:"dataObjects"`
	Watchers          []string `json:"watchers"`
}

func main() {
	dir := flag.String("dir", "", "the local backend's cluster directory (--local-dir)")
	poolName := flag.String("pool", "rbd", "pool")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: rbdj-inspect --dir DIR [--pool POOL] image NAME | objects SUBSTRING...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *dir == "" || flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*dir, *poolName, flag.Arg(0), flag.Args()[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "rbdj-inspect: %v\n", err)
		os.Exit(1)
	}
}

func run(dir, poolName, cmd string, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := storage.OpenLocal(storage.LocalOptions{Dir: dir})
	if err != nil {
		return err
	}
	defer st.Close()
	pool, err := st.Pool(ctx, poolName)
	if err != nil {
		return err
	}
	switch cmd {
	case "image":
		if len(args) != 1 {
			return errors.New("image: want one image name")
		}
		r, err := inspectImage(ctx, st, pool, args[0])
		if err != nil {
			return err
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "objects":
		names, err := pool.List(ctx, "")
		if err != nil {
			return err
		}
		sort.Strings(names)
		for _, n := range names {
			for _, s := range args {
				if strings.Contains(n, s) {
					fmt.Println(n)
					break
				}
			}
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func inspectImage(ctx context.Context, st storage.Storage, pool objstore.Pool, name string) (imageReport, error) {
	info, err := st.ImageInfo(ctx, pool, name)
	if err != nil {
		if errors.Is(err, image.ErrNotFound) {
			return imageReport{}, fmt.Errorf("image %s: %w", name, err)
		}
		return imageReport{}, err
	}
	r := imageReport{
		Name: name, ID: info.ID, Size: info.Size, Order: info.Order,
		Features:     clsrbd.FeatureNames(info.Features),
		JournalOrder: info.JournalOrder, JournalSplayWidth: info.JournalSplayWidth,
		JournalObjects: []string{}, Watchers: []string{},
	}
	names, err := pool.List(ctx, "")
	if err != nil {
		return imageReport{}, err
	}
	sort.Strings(names)
	header := journal.HeaderOID(info.ID)
	for _, n := range names {
		switch {
		case n == header:
			r.JournalHeader = n
		case strings.HasPrefix(n, "journal_data.") && strings.Contains(n, "."+info.ID+"."):
			r.JournalObjects = append(r.JournalObjects, n)
		case strings.HasPrefix(n, "rbd_data."+info.ID+"."):
			r.DataObjects++
		}
	}
	users, err := st.ImageUsers(ctx, pool, name)
	if err != nil {
		return imageReport{}, err
	}
	for _, u := range users {
		r.Watchers = append(r.Watchers, fmt.Sprintf("%s at %s", u.Client.Name(), u.Client.Addr))
	}
	return r, nil
}
