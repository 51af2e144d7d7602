package guestimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lock serialises builds: a channel for goroutines of this process (so a
// waiter can give up with its context), flock for other processes.
func (b *Builder) lock(ctx context.Context) (unlock func(), err error) {
	b.once.Do(func() { b.sem = make(chan struct{}, 1) })
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	release := func() { <-b.sem }
	if err := os.MkdirAll(b.Root.ImageDir(), 0o755); err != nil {
		release()
		return nil, fmt.Errorf("image cache: %w", err)
	}
	f, err := os.OpenFile(b.Root.ImageLock(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		release()
		return nil, fmt.Errorf("image lock: %w", err)
	}
	// flock cannot be interrupted by a context, so poll without blocking.
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			release()
			return nil, fmt.Errorf("image lock: %w", err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			f.Close()
			release()
			return nil, ctx.Err()
		}
	}
	return func() {
		f.Close() // drops the flock
		release()
	}, nil
}
