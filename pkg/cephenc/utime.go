package cephenc

import (
	"math"
	"time"
)

// UTime is Ceph's utime_t (include/utime.h): seconds and nanoseconds since
// the Unix epoch, each a u32. It is kept as its two fields, not as a
// time.Time, because Ceph compares and adds them as they are, unnormalised
// values included.
type UTime struct {
	Sec, Nsec uint32
}

// UTimeOf returns t as Ceph's clock reports it (ceph_clock_now): the Unix
// seconds truncated to 32 bits and the nanoseconds.
func UTimeOf(t time.Time) UTime {
	return UTime{Sec: uint32(t.Unix()), Nsec: uint32(t.Nanosecond())}
}

// Time returns u as a time.Time.
func (u UTime) Time() time.Time { return time.Unix(int64(u.Sec), int64(u.Nsec)) }

// IsZero reports whether u is zero (for a lock's expiration: never).
func (u UTime) IsZero() bool { return u.Sec == 0 && u.Nsec == 0 }

// Before reports whether u is earlier than v (utime_t's operator<).
func (u UTime) Before(v UTime) bool {
	return u.Sec < v.Sec || (u.Sec == v.Sec && u.Nsec < v.Nsec)
}

// Add is utime_t's operator+=: the seconds are capped at the u32 maximum and
// the nanoseconds normalised only when they exceed one second (strictly, as
// Ceph's normalize does).
func (u UTime) Add(v UTime) UTime {
	r := UTime{Sec: uint32(min(uint64(u.Sec)+uint64(v.Sec), math.MaxUint32)), Nsec: u.Nsec + v.Nsec}
	if r.Nsec > 1e9 {
		r.Sec = uint32(min(uint64(r.Sec)+uint64(r.Nsec/1e9), math.MaxUint32))
		r.Nsec %= 1e9
	}
	return r
}

// denc codes u as utime_t: u32 seconds, u32 nanoseconds.
func (u *UTime) denc(c Coder) {
	c.U32(&u.Sec)
	c.U32(&u.Nsec)
}

// Encode writes u as utime_t.
func (u UTime) Encode(e *Encoder) { u.denc(Encoding(e)) }

// Decode reads a utime_t.
func (u *UTime) Decode(d *Decoder) error { return DecodeWith(d, u.denc) }
