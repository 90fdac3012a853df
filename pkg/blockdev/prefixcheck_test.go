package blockdev

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
)

// The write-back crash test's checker: after a crash and replay, the
// device must equal the result of a prefix of the writes issued (in issue
// order: one writer, one write at a time) over what it held before, and
// that prefix must include every write acknowledged before the last
// completed flush.

// crashWrite is one issued write: Blocks blocks from Block on, every one
// stamped with Seq (seqs increase in issue order and never repeat).
type crashWrite struct {
	Seq           uint64
	Block, Blocks int
}

// badBlock is the holder of a block that carries no valid stamp (torn or
// foreign data).
const badBlock = ^uint64(0)

// checkPrefix returns the length k of the prefix of writes that state
// shows, or why state is not the result of any prefix. base and state hold
// the seq that wrote each block (0: never written, badBlock: unreadable);
// durable is how many writes (from the start of writes) were acknowledged
// before the last completed flush was issued.
//
// The state can only be the prefix that ends at the newest write it shows:
// a later write in the prefix would be visible, unless overwritten by an
// even later one, which would then be visible. So k is fixed by the
// newest visible write, and state must equal base with writes[:k] applied.
func checkPrefix(base, state []uint64, writes []crashWrite, durable int) (int, error) {
	if len(base) != len(state) {
		return 0, fmt.Errorf("base has %d blocks, state %d", len(base), len(state))
	}
	index := make(map[uint64]int, len(writes))
	for i, w := range writes {
		if i > 0 && w.Seq <= writes[i-1].Seq {
			return 0, fmt.Errorf("write %d: seq %d does not follow %d", i, w.Seq, writes[i-1].Seq)
		}
		if w.Blocks <= 0 || w.Block < 0 || w.Block+w.Blocks > len(state) {
			return 0, fmt.Errorf("write %d (seq %d): blocks %d+%d outside the %d-block device", i, w.Seq, w.Block, w.Blocks, len(state))
		}
		index[w.Seq] = i
	}
	k := 0
	for b, h := range state {
		if h == badBlock {
			return 0, fmt.Errorf("block %d holds no valid stamp (torn or foreign data)", b)
		}
		if i, ok := index[h]; ok {
			k = max(k, i+1)
		} else if h != base[b] {
			return 0, fmt.Errorf("block %d holds seq %d, which is neither a write issued since nor what it held before (%d)", b, h, base[b])
		}
	}
	if k < durable {
		return k, fmt.Errorf("state shows writes up to #%d (seq %d) but %d were acknowledged before the last completed flush: write #%d (seq %d) and later lost",
			k, seqAt(writes, k-1), durable, k+1, writes[k].Seq)
	}
	want := append([]uint64(nil), base...)
	for _, w := range writes[:k] {
		for b := w.Block; b < w.Block+w.Blocks; b++ {
			want[b] = w.Seq
		}
	}
	var diffs []string
	for b := range want {
		if want[b] != state[b] {
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("block %d holds seq %d, prefix gives %d", b, state[b], want[b]))
			} else {
				diffs = append(diffs, "...")
				break
			}
		}
	}
	if len(diffs) > 0 {
		return k, fmt.Errorf("not a prefix of the issued writes: write #%d (seq %d) is present but the device differs from the first %d writes: %s",
			k, writes[k-1].Seq, k, strings.Join(diffs, "; "))
	}
	return k, nil
}

func seqAt(ws []crashWrite, i int) uint64 {
	if i < 0 {
		return 0
	}
	return ws[i].Seq
}

func TestCheckPrefix(t *testing.T) {
	ws := []crashWrite{
		{Seq: 11, Block: 0, Blocks: 2}, // #1: blocks 0-1
		{Seq: 12, Block: 1, Blocks: 2}, // #2: blocks 1-2, overwrites block 1
		{Seq: 13, Block: 3, Blocks: 1}, // #3: block 3
		{Seq: 14, Block: 0, Blocks: 1}, // #4: block 0
	}
	base := []uint64{5, 0, 0, 7}
	for _, tc := range []struct {
		name    string
		state   []uint64
		durable int
		wantK   int
		wantErr string // "" = a valid prefix
	}{
		{"nothing survived, nothing flushed", []uint64{5, 0, 0, 7}, 0, 0, ""},
		{"first write", []uint64{11, 11, 0, 7}, 1, 1, ""},
		{"first two", []uint64{11, 12, 12, 7}, 2, 2, ""},
		{"all four", []uint64{14, 12, 12, 13}, 4, 4, ""},
		{"three, one flushed", []uint64{11, 12, 12, 13}, 1, 3, ""},
		{"flushed write lost", []uint64{11, 11, 0, 7}, 2, 1, "acknowledged before the last completed flush"},
		{"everything lost after a flush", []uint64{5, 0, 0, 7}, 1, 0, "acknowledged before the last completed flush"},
		// #3 present while #2 (blocks 1-2) is missing: the crafted non-prefix.
		{"later write without an earlier one", []uint64{11, 11, 0, 13}, 0, 3, "not a prefix"},
		// #2 present while #1 is missing at block 0.
		{"earlier overlapping write missing", []uint64{5, 12, 12, 7}, 0, 2, "not a prefix"},
		// #1 applied over #2 in their overlap: out of order.
		{"overlap applied out of order", []uint64{11, 11, 12, 7}, 0, 2, "not a prefix"},
		{"torn block", []uint64{11, badBlock, 0, 7}, 0, 0, "no valid stamp"},
		{"unknown write", []uint64{99, 0, 0, 7}, 0, 0, "neither a write issued"},
		{"old value resurrected", []uint64{5, 0, 0, 0}, 0, 0, "neither a write issued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := checkPrefix(base, tc.state, ws, tc.durable)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("valid prefix rejected: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			case (tc.wantErr == "" || k != 0) && k != tc.wantK:
				t.Fatalf("k = %d, want %d", k, tc.wantK)
			}
		})
	}
}

func TestCheckPrefixBadInput(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []crashWrite
	}{
		{"seq not increasing", []crashWrite{{Seq: 2, Blocks: 1}, {Seq: 2, Blocks: 1}}},
		{"outside the device", []crashWrite{{Seq: 1, Block: 3, Blocks: 2}}},
		{"empty write", []crashWrite{{Seq: 1, Block: 0, Blocks: 0}}},
	} {
		if _, err := checkPrefix(make([]uint64, 4), make([]uint64, 4), tc.writes, 0); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// Block stamps of the write-back crash test: every 4 KiB block a write
// covers holds its seq, its block number and a checksum.
const stampMagic = 0x77626b7374616d70

func stampBlock(b []byte, seq uint64, block int) {
	binary.LittleEndian.PutUint64(b, stampMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(block))
	for i := 28; i < len(b); i++ {
		b[i] = byte(seq*31 + uint64(i)*7 + uint64(block))
	}
	binary.LittleEndian.PutUint32(b[24:], crc32.ChecksumIEEE(b[28:]))
}

// parseStamp returns the seq a block holds: 0 for zeros, badBlock for
// anything that is not a valid stamp of this block.
func parseStamp(b []byte, block int) uint64 {
	if binary.LittleEndian.Uint64(b) != stampMagic {
		for _, c := range b {
			if c != 0 {
				return badBlock
			}
		}
		return 0
	}
	if binary.LittleEndian.Uint64(b[16:]) != uint64(block) || binary.LittleEndian.Uint32(b[24:]) != crc32.ChecksumIEEE(b[28:]) {
		return badBlock
	}
	return binary.LittleEndian.Uint64(b[8:])
}

func TestStamp(t *testing.T) {
	b := make([]byte, rawBlock)
	if got := parseStamp(b, 3); got != 0 {
		t.Fatalf("zeros parse as %d", got)
	}
	stampBlock(b, 42, 3)
	if got := parseStamp(b, 3); got != 42 {
		t.Fatalf("stamp parses as %d, want 42", got)
	}
	if got := parseStamp(b, 4); got != badBlock {
		t.Fatalf("a block moved elsewhere parses as %d", got)
	}
	b[100] ^= 1
	if got := parseStamp(b, 3); got != badBlock {
		t.Fatalf("a damaged block parses as %d", got)
	}
}
