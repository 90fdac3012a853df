package cephenc

import (
	"testing"
	"time"
)

func TestUTimeArithmetic(t *testing.T) {
	tests := []struct {
		now, d, want UTime
	}{
		{UTime{100, 5}, UTime{30, 0}, UTime{130, 5}},
		{UTime{100, 600_000_000}, UTime{1, 500_000_000}, UTime{102, 100_000_000}},
		{UTime{100, 500_000_000}, UTime{0, 500_000_000}, UTime{100, 1_000_000_000}}, // normalised only past 1e9
		{UTime{100, 1}, UTime{0, 2_999_999_999}, UTime{103, 0}},
		{UTime{100, 7}, UTime{0xfffffff0, 0}, UTime{0xffffffff, 7}},
		{UTime{0xfffffff0, 999_999_999}, UTime{0xf, 999_999_999}, UTime{0xffffffff, 999_999_998}},
	}
	for _, tt := range tests {
		if got := tt.now.Add(tt.d); got != tt.want {
			t.Errorf("%v + %v = %v, want %v", tt.now, tt.d, got, tt.want)
		}
	}
	now := time.Unix(1795261020, 228994343)
	if got := UTimeOf(now); got != (UTime{1795261020, 228994343}) || !got.Time().Equal(now) {
		t.Errorf("UTimeOf(%v) = %v", now, got)
	}
}
