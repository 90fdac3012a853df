package local

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// flockCtx takes an flock on fd, polling so that the wait honours ctx.
func flockCtx(ctx context.Context, fd int, how int) error {
	backoff := 20 * time.Microsecond
	var t *time.Timer
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		if t == nil {
			t = time.NewTimer(backoff)
			defer t.Stop()
		} else {
			t.Reset(backoff)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if backoff < 500*time.Microsecond {
			backoff *= 2
		}
	}
}

// chanMutex is a mutex whose Lock honours a context.
type chanMutex chan struct{}

func newChanMutex() chanMutex { return make(chanMutex, 1) }

func (m chanMutex) lock(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	default:
	}
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m chanMutex) tryLock() bool {
	select {
	case m <- struct{}{}:
		return true
	default:
		return false
	}
}

func (m chanMutex) unlock() { <-m }
