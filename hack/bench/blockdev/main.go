// Command blockdev-bench measures, in one run on one machine, fio on the
// kernel block path of:
//
//   - the journaled device with each ack policy,
//   - the same device with journaling off,
//   - a plain loop device over a file on the same filesystem (the ceiling),
//
// all on the embedded local backend, and prints a Markdown table (and JSON
// with -json). It needs root, fio, FUSE and loop devices.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/classes"

	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev"
	"github.com/csi-rbdj/csi-rbdj/pkg/blockdev/fuseloop"
	"github.com/csi-rbdj/csi-rbdj/pkg/image"
	"github.com/csi-rbdj/csi-rbdj/pkg/objstore/local"
)

type job struct {
	Name    string
	RW      string
	BS      string
	QD      int
	Metric  string // "iops" or "MB/s"
	IsWrite bool
}

var jobs = []job{
	{"4K randwrite QD1", "randwrite", "4k", 1, "iops", true},
	{"4K randwrite QD16", "randwrite", "4k", 16, "iops", true},
	{"1M seqwrite QD4", "write", "1m", 4, "MB/s", true},
	{"4K randread QD16", "randread", "4k", 16, "iops", false},
}

type result struct {
	Config string             `json:"config"`
	Values map[string]float64 `json:"values"`
}

func main() {
	var (
		dir      = flag.String("dir", "", "work directory (default: a new temp dir under /var/tmp)")
		runtime  = flag.Duration("runtime", 10*time.Second, "fio runtime per job")
		span     = flag.String("span", "256m", "fio region")
		jsonOut  = flag.String("json", "", "write results as JSON to this file")
		only     = flag.String("only", "", "comma-separated configs to run (default all)")
		payload  = flag.Int("max-payload", 0, "journal event payload cap (0: default)")
		imgOrder = flag.Int("order", 22, "image object order")
	)
	flag.Parse()
	if err := run(*dir, *runtime, *span, *jsonOut, *only, *payload, uint8(*imgOrder)); err != nil {
		fmt.Fprintln(os.Stderr, "blockdev-bench:", err)
		os.Exit(1)
	}
}

func run(dir string, runtime time.Duration, span, jsonOut, only string, payload int, order uint8) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return fmt.Errorf("fio not installed (hack/install-deps.sh)")
	}
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "blockdev-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	type config struct {
		name string
		open func(ctx context.Context) (dev string, close func() error, err error)
	}
	const size = 1 << 30
	served := func(name string, o blockdev.Options) config {
		return config{name, func(ctx context.Context) (string, func() error, error) {
			return serve(ctx, filepath.Join(dir, strings.ReplaceAll(name, " ", "-")), size, order, o)
		}}
	}
	configs := []config{
		served("journaled, ack after apply", blockdev.Options{AckPolicy: blockdev.AckApplied, MaxPayload: payload}),
		served("journaled, ack after journal", blockdev.Options{AckPolicy: blockdev.AckJournaled, MaxPayload: payload}),
		served("journaling off", blockdev.Options{Unjournaled: true}),
		{"plain loop on a file", func(ctx context.Context) (string, func() error, error) {
			return plainLoop(filepath.Join(dir, "plain.img"), size)
		}},
	}
	var results []result
	for _, c := range configs {
		if only != "" && !strings.Contains(","+only+",", ","+c.name+",") {
			continue
		}
		ctx := context.Background()
		dev, closeFn, err := c.open(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		res := result{Config: c.name, Values: map[string]float64{}}
		for _, j := range jobs {
			v, err := fio(dev, j, runtime, span)
			if err != nil {
				closeFn()
				return fmt.Errorf("%s: %s: %w", c.name, j.Name, err)
			}
			res.Values[j.Name] = v
			fmt.Fprintf(os.Stderr, "%-30s %-20s %10.0f %s\n", c.name, j.Name, v, j.Metric)
		}
		if err := closeFn(); err != nil {
			return fmt.Errorf("%s: close: %w", c.name, err)
		}
		results = append(results, res)
	}
	printTable(results)
	if jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		return os.WriteFile(jsonOut, b, 0o644)
	}
	return nil
}

func serve(ctx context.Context, dir string, size int64, order uint8, o blockdev.Options) (string, func() error, error) {
	c, err := local.Open(dir, local.Options{Classes: classes.Standard()})
	if err != nil {
		return "", nil, err
	}
	pool, err := c.Pool(ctx, "rbd")
	if err != nil {
		c.Close()
		return "", nil, err
	}
	if err := image.Create(ctx, pool, "bench", size, image.CreateOptions{Order: order}); err != nil {
		c.Close()
		return "", nil, err
	}
	d, err := blockdev.Open(ctx, pool, "bench", o)
	if err != nil {
		c.Close()
		return "", nil, err
	}
	dev, err := fuseloop.Attach(ctx, d, fuseloop.Options{StateDir: filepath.Join(dir, "state"), Name: "bench"})
	if err != nil {
		d.Close(ctx)
		c.Close()
		return "", nil, err
	}
	return dev.Path(), func() error {
		cerr := dev.Close(ctx)
		derr := d.Close(ctx)
		c.Close()
		if cerr != nil {
			return cerr
		}
		return derr
	}, nil
}

func plainLoop(file string, size int64) (string, func() error, error) {
	f, err := os.Create(file)
	if err != nil {
		return "", nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return "", nil, err
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", file).Output()
	if err != nil {
		return "", nil, fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() error { return exec.Command("losetup", "-d", dev).Run() }, nil
}

func fio(dev string, j job, runtime time.Duration, span string) (float64, error) {
	args := []string{
		"--name=" + strings.ReplaceAll(j.Name, " ", "_"), "--filename=" + dev,
		"--rw=" + j.RW, "--bs=" + j.BS, fmt.Sprintf("--iodepth=%d", j.QD),
		"--ioengine=libaio", "--direct=1", "--size=" + span, "--time_based",
		fmt.Sprintf("--runtime=%d", int(runtime.Seconds())), "--ramp_time=1",
		"--output-format=json", "--randrepeat=0", "--norandommap",
	}
	out, err := exec.Command("fio", args...).Output()
	if err != nil {
		return 0, fmt.Errorf("fio %s: %w", strings.Join(args, " "), err)
	}
	var r struct {
		Jobs []struct {
			Read  struct{ IOPS, BWBytes float64 } `json:"read"`
			Write struct{ IOPS, BWBytes float64 } `json:"write"`
		} `json:"jobs"`
	}
	// fio names the fields iops and bw_bytes.
	out = []byte(strings.NewReplacer(`"iops"`, `"IOPS"`, `"bw_bytes"`, `"BWBytes"`).Replace(string(out)))
	if err := json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &r); err != nil || len(r.Jobs) == 0 {
		return 0, fmt.Errorf("parse fio output: %v", err)
	}
	s := r.Jobs[0].Read
	if j.IsWrite {
		s = r.Jobs[0].Write
	}
	if j.Metric == "MB/s" {
		return s.BWBytes / 1e6, nil
	}
	return s.IOPS, nil
}

func printTable(results []result) {
	if len(results) == 0 {
		return
	}
	var ceiling *result
	for i := range results {
		if results[i].Config == "plain loop on a file" {
			ceiling = &results[i]
		}
	}
	fmt.Printf("\n| config |")
	for _, j := range jobs {
		fmt.Printf(" %s (%s) |", j.Name, j.Metric)
	}
	fmt.Printf("\n|---|")
	for range jobs {
		fmt.Printf("---:|")
	}
	fmt.Println()
	for _, r := range results {
		fmt.Printf("| %s |", r.Config)
		for _, j := range jobs {
			v := r.Values[j.Name]
			if ceiling != nil && ceiling != &r && ceiling.Values[j.Name] > 0 {
				fmt.Printf(" %.0f (%.0f%%) |", v, 100*v/ceiling.Values[j.Name])
			} else {
				fmt.Printf(" %.0f |", v)
			}
		}
		fmt.Println()
	}
	if ceiling != nil {
		fmt.Println("\n(percentages: of the plain loop device on a file, the machine's limit)")
	}
}
