package main

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func row(name, backend string, values map[string]float64) result {
	return result{Target: name, Backend: backend, Values: values}
}

func TestEvaluate(t *testing.T) {
	rep := &report{
		Results: []result{
			row(anchorName, "ceph", map[string]float64{job4KQD1: 1000, job4KQD16: 2000, job64K: 100}),
			row(librbdNoCacheName, "ceph", map[string]float64{job4KQD1: 500, job4KQD16: 1000, job64K: 0}),
			row(policyRowName(writeBackPolicy), "ceph", map[string]float64{job4KQD1: 1000, job4KQD16: 2999, job64K: 200}),
			row(policyRowName("applied"), "ceph", map[string]float64{job4KQD1: 600, job4KQD16: 1500}),
		},
		Many: []manyResult{
			{Backend: "local", Volumes: 10, Job: "4K randwrite QD4", PeakRSSMiB: 4000, SlowestToFastest: 0.1},
			{Backend: "local", Volumes: 50, Job: "4K randwrite QD4", PeakRSSMiB: 1024, SlowestToFastest: 0.49},
			{Backend: "local", Volumes: 50, Job: "1M seqwrite QD4", PeakRSSMiB: 900, SlowestToFastest: 0.8},
			{Backend: "ceph", Volumes: 50, Job: "4K randwrite QD4", PeakRSSMiB: 900, SlowestToFastest: 0.8},
			{Backend: "ceph", Volumes: 50, Job: "1M seqwrite QD4", PeakRSSMiB: 1100, SlowestToFastest: 0.4},
		},
	}
	specs := []targetSpec{
		{Name: "exactly at the bound", Min: 1.0, Unit: "×", value: ratioOf(policyRowName(writeBackPolicy), "ceph", anchorName, "ceph", job4KQD1)},
		{Name: "just below", Min: 1.5, Unit: "×", value: ratioOf(policyRowName(writeBackPolicy), "ceph", anchorName, "ceph", job4KQD16)},
		{Name: "above", Min: 1.5, Unit: "×", value: ratioOf(policyRowName(writeBackPolicy), "ceph", anchorName, "ceph", job64K)},
		{Name: "base figure 0", Min: 1.5, Unit: "×", value: ratioOf(policyRowName(writeBackPolicy), "ceph", librbdNoCacheName, "ceph", job64K)},
		{Name: "job not measured on the row", Min: 1.5, Unit: "×", value: ratioOf(policyRowName("applied"), "ceph", librbdNoCacheName, "ceph", job64K)},
		{Name: "row missing", Min: 1.2, Unit: "×", value: ratioOf(policyRowName("journaled"), "ceph", librbdNoCacheName, "ceph", job4KQD1)},
		{Name: "durable 1.2×", Min: 1.2, Unit: "×", value: ratioOf(policyRowName("applied"), "ceph", librbdNoCacheName, "ceph", job4KQD1)},
		{Name: "RSS at the bound (the highest job)", Max: 1024, Unit: "MiB", value: manyFigure("local", 50, true, func(m manyResult) float64 { return m.PeakRSSMiB })},
		{Name: "fairness below (the lowest job)", Min: 0.5, Unit: "×", value: manyFigure("local", 50, false, func(m manyResult) float64 { return m.SlowestToFastest })},
		{Name: "RSS over the bound in the second job", Max: 1024, Unit: "MiB", value: manyFigure("ceph", 50, true, func(m manyResult) float64 { return m.PeakRSSMiB })},
		{Name: "count not measured", Max: 1024, Unit: "MiB", value: manyFigure("ceph", 10, true, func(m manyResult) float64 { return m.PeakRSSMiB })},
	}
	got := evaluate(specs, rep)
	want := map[string]struct {
		status string
		got    float64
	}{
		"exactly at the bound":                 {statusMet, 1.0},
		"just below":                           {statusMissed, 1.4995},
		"above":                                {statusMet, 2.0},
		"base figure 0":                        {statusNotMeasured, 0},
		"job not measured on the row":          {statusNotMeasured, 0},
		"row missing":                          {statusNotMeasured, 0},
		"durable 1.2×":                         {statusMet, 1.2},
		"RSS at the bound (the highest job)":   {statusMet, 1024},
		"fairness below (the lowest job)":      {statusMissed, 0.49},
		"RSS over the bound in the second job": {statusMissed, 1100},
		"count not measured":                   {statusNotMeasured, 0},
	}
	if len(got) != len(specs) {
		t.Fatalf("%d results for %d targets", len(got), len(specs))
	}
	for _, r := range got {
		w := want[r.Name]
		if r.Status != w.status {
			t.Errorf("%s: status %q, want %q", r.Name, r.Status, w.status)
		}
		if (r.Got == nil) != (w.status == statusNotMeasured) {
			t.Errorf("%s: got %v with status %q", r.Name, r.Got, r.Status)
		} else if r.Got != nil && (*r.Got-w.got > 1e-9 || w.got-*r.Got > 1e-9) {
			t.Errorf("%s: got %v, want %v", r.Name, *r.Got, w.got)
		}
	}
	if got[0].Want != "≥ 1.00×" || got[7].Want != "≤ 1024 MiB" {
		t.Errorf("want strings %q, %q", got[0].Want, got[7].Want)
	}
}

func TestTargetSpecsCoverTheIssues(t *testing.T) {
	// Every target of issues 15 and 18, with its bound.
	byName := map[string]targetSpec{}
	for _, s := range targetSpecs() {
		key := s.Group + ": " + s.Name
		if _, dup := byName[key]; dup {
			t.Errorf("duplicate target %q", key)
		}
		byName[key] = s
	}
	for _, tc := range []struct {
		group, name string
		min, max    float64
	}{
		{"write-back vs librbd", "ceph 4K randwrite QD1", 1.0, 0},
		{"write-back vs librbd", "ceph 4K randwrite QD16", 1.5, 0},
		{"write-back vs librbd", "ceph 64K seqwrite QD4", 1.5, 0},
		{"write-back vs librbd", "ceph 4K randread QD16", 1.0, 0},
		{"durable policies", "ceph ack applied, 4K randwrite QD16", 1.5, 0},
		{"durable policies", "ceph ack journaled, 64K seqwrite QD4", 1.5, 0},
		{"durable policies", "ceph ack journaled, 4K randwrite QD1", 1.2, 0},
		{"within 30%", "ceph 4K randwrite QD16", 0.7, 0},
		{"within 30%", "local 1M seqwrite QD4", 0.7, 0},
		{"metadata journal", "ceph 64K seqwrite QD4 vs our unjournaled", 0.9, 0},
		{"metadata journal", "ceph 1M seqwrite QD4 vs full journal (ack applied)", 1.5, 0},
		{"metadata journal", "local 1M seqwrite QD4 vs our unjournaled", 0.9, 0},
		{"50 volumes", "ceph peak RSS (highest over the jobs)", 0, 1024},
		{"50 volumes", "local slowest volume / fastest (lowest over the jobs)", 0.5, 0},
	} {
		found := false
		for key, s := range byName {
			if strings.Contains(s.Group, tc.group) && s.Name == tc.name {
				found = true
				if s.Min != tc.min || s.Max != tc.max {
					t.Errorf("%s: min %v max %v, want %v %v", key, s.Min, s.Max, tc.min, tc.max)
				}
			}
		}
		if !found {
			t.Errorf("no target %q in a group with %q", tc.name, tc.group)
		}
	}
}

func TestPolicyRows(t *testing.T) {
	// "applied" and "journaled" exist on every branch; "no-such" never.
	rows, notes := policyRows([]string{"applied", "no-such", "journaled", "applied"})
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
		if r.Policy.String() != r.Name {
			t.Errorf("policy %q parsed as %v", r.Name, r.Policy)
		}
	}
	if !reflect.DeepEqual(names, []string{"applied", "journaled"}) {
		t.Errorf("rows %v, want [applied journaled] (unknown skipped, duplicates once)", names)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], `"no-such"`) {
		t.Errorf("notes %q, want one naming the skipped policy", notes)
	}
}

func TestParseCounts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "1,10,50", want: []int{1, 10, 50}},
		{in: " 2 , 4 ", want: []int{2, 4}},
		{in: "", want: nil},
		{in: "0", wantErr: true},
		{in: "10,1", wantErr: true},
		{in: "5,5", wantErr: true},
		{in: "x", wantErr: true},
	} {
		got, err := parseCounts(tc.in)
		if (err != nil) != tc.wantErr || (!tc.wantErr && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("parseCounts(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestCheckOwnCluster(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dir     string
		port    int
		wantErr bool
	}{
		{name: "the bench's default", dir: "/var/tmp/csi-rbdj-bench-ceph", port: 13400},
		{name: "the shared cluster's directory", dir: "/var/tmp/csi-rbdj-ceph", port: 13400, wantErr: true},
		{name: "the shared directory, spelled differently", dir: "/var/tmp/../tmp/csi-rbdj-ceph/", port: 13400, wantErr: true},
		{name: "the shared mon port", dir: "/var/tmp/x", port: 13300, wantErr: true},
		{name: "msgr1 on the shared msgr2 port", dir: "/var/tmp/x", port: 13299, wantErr: true},
		{name: "msgr2 on the shared msgr1 port", dir: "/var/tmp/x", port: 13301, wantErr: true},
		{name: "next to it", dir: "/var/tmp/x", port: 13302},
		{name: "no directory", dir: "", port: 13400, wantErr: true},
		{name: "bad port", dir: "/var/tmp/x", port: 0, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkOwnCluster(tc.dir, tc.port); (err != nil) != tc.wantErr {
				t.Errorf("checkOwnCluster(%q, %d) = %v, want error %v", tc.dir, tc.port, err, tc.wantErr)
			}
		})
	}
}

func TestConfValue(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "ceph.conf")
	if err := os.WriteFile(conf, []byte("[global]\nfsid = x\nrun dir = /var/tmp/c/run\n[osd]\nosd_data = /d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"run_dir": "/var/tmp/c/run", "osd data": "/d", "mon_host": ""} {
		if got := confValue(conf, key); got != want {
			t.Errorf("confValue(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestParseJob(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    job
		wantErr bool
	}{
		{in: "4K randwrite QD4", want: job{Name: "4K randwrite QD4", RW: "randwrite", BS: "4k", QD: 4, Metric: "IOPS", Write: true}},
		{in: " 1M  seqwrite QD16 ", want: job{Name: "1M seqwrite QD16", RW: "write", BS: "1m", QD: 16, Metric: "MB/s", Write: true}},
		{in: "64k seqwrite QD1", want: job{Name: "64k seqwrite QD1", RW: "write", BS: "64k", QD: 1, Metric: "MB/s", Write: true}},
		{in: "4K randread QD16", wantErr: true},
		{in: "4 randwrite QD4", wantErr: true},
		{in: "K randwrite QD4", wantErr: true},
		{in: "1MK randwrite QD4", wantErr: true},
		{in: "0K randwrite QD4", wantErr: true},
		{in: "4K randwrite 4", wantErr: true},
		{in: "4K randwrite QD0", wantErr: true},
		{in: "4K randwrite", wantErr: true},
	} {
		got, err := parseJob(tc.in)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("parseJob(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestSelectJobs(t *testing.T) {
	var names []string
	for _, j := range selectJobs(allJobs, "QD16,1M") {
		names = append(names, j.Name)
	}
	if want := []string{job4KQD16, job1M, jobReadQ16}; !reflect.DeepEqual(names, want) {
		t.Errorf("selected %v, want %v", names, want)
	}
}

func TestMatchesAny(t *testing.T) {
	for _, tc := range []struct {
		s, list string
		want    bool
	}{
		{"ours, full journal, ack journaled (ceph)", "ack journaled", true},
		{"librbd, journaling (fio rbd engine) (ceph)", "ack journaled,librbd", true},
		{"librbd, no journaling (fio rbd engine) (ceph)", "ack journaled|librbd, journaling (fio", false},
		{"librbd, journaling (fio rbd engine) (ceph)", "ack journaled|librbd, journaling (fio", true},
		{"ours, journaling off (local)", "(ceph)", false},
		{"many", "", false},
		{"x", ",,", false},
	} {
		if got := matchesAny(tc.s, tc.list); got != tc.want {
			t.Errorf("matchesAny(%q, %q) = %v, want %v", tc.s, tc.list, got, tc.want)
		}
	}
}

// TestRunRound drives rounds over fake rows (pure orchestration: no fio):
// rows are visited in the rotated order, the group's environment is begun
// and ended per round (or per row), a read job is preceded by a fill unless
// a sequential write already covered the span, and every run is collected.
func TestRunRound(t *testing.T) {
	saved := jobs
	defer func() { jobs = saved }()
	for _, tc := range []struct {
		name      string
		jobs      []job
		seqBytes  float64 // what the seqwrite run reports it moved
		perRow    bool
		wantFills int // per row and round
	}{
		{name: "read after a covering seqwrite", jobs: allJobs, seqBytes: 512 << 20, wantFills: 0},
		{name: "read after a short seqwrite", jobs: allJobs, seqBytes: 100 << 20, wantFills: 1},
		{name: "read only", jobs: []job{allJobs[4]}, wantFills: 1},
		{name: "writes only", jobs: allJobs[:2], wantFills: 0},
		{name: "fresh environment per row", jobs: allJobs[:1], perRow: true, wantFills: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jobs = tc.jobs
			o := options{span: 256 << 20, repeat: 3}
			var events []string
			mk := func(name string) rowSpec {
				return rowSpec{Name: name, Backend: "fake", open: func(context.Context) (*target, error) {
					events = append(events, "open "+name)
					return &target{
						run: func(_ context.Context, j job) (sample, error) {
							s := sample{Value: 1, Bytes: 4096}
							if j.RW == "write" {
								s.Bytes = tc.seqBytes
							}
							return s, nil
						},
						fill:  func(context.Context) error { events = append(events, "fill "+name); return nil },
						close: func() error { events = append(events, "close "+name); return nil },
					}, nil
				}}
			}
			g := &group{name: "fake", perRow: tc.perRow, rows: []rowSpec{mk("a"), mk("b"), mk("c")}}
			g.begin = func(context.Context) (func(), error) {
				events = append(events, "begin")
				return func() { events = append(events, "end") }, nil
			}
			acc := newAccumulator()
			var order []string
			for r := 0; r < o.repeat; r++ {
				events = nil
				if err := runRound(context.Background(), o, g, r, acc); err != nil {
					t.Fatal(err)
				}
				begins, fills := 0, 0
				var opened []string
				for _, e := range events {
					switch {
					case e == "begin":
						begins++
					case strings.HasPrefix(e, "fill "):
						fills++
					case strings.HasPrefix(e, "open "):
						opened = append(opened, strings.TrimPrefix(e, "open "))
					}
				}
				order = append(order, strings.Join(opened, ""))
				wantBegins := 1
				if tc.perRow {
					wantBegins = 3
				}
				if begins != wantBegins || events[len(events)-1] != "end" {
					t.Errorf("round %d: events %v: %d begins, want %d, ending with end", r, events, begins, wantBegins)
				}
				if fills != tc.wantFills*3 {
					t.Errorf("round %d: %d fills, want %d (events %v)", r, fills, tc.wantFills*3, events)
				}
			}
			if want := []string{"abc", "bca", "cab"}; !reflect.DeepEqual(order, want) {
				t.Errorf("orders %v, want %v", order, want)
			}
			res := acc.result(g.rows[1])
			for _, j := range tc.jobs {
				if js := res.Jobs[j.Name]; js == nil || len(js.Runs) != 3 {
					t.Errorf("row b, %s: %+v, want 3 runs", j.Name, js)
				}
			}
		})
	}
}
