package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// ErrResizeRunning is the answer to a resize, or a bounds query, while a
// resize runs.
var ErrResizeRunning = errdefs.Errorf(errdefs.ErrFailedPrecondition, "a resize of the stateful filesystem is in progress")

// resizeState is the last resize asked for.
type resizeState struct {
	running bool
	// before is the filesystem's size when it started.
	before uint64
	// target is the size it was asked for.
	target uint64
	// err is how it failed, once it has ended; nil if it did not.
	err error
	// done is closed when it ends.
	done chan struct{}
}

// ResizeStatus is what GetResizeStatus reports.
type ResizeStatus struct {
	// Running: a resize is in progress.
	Running bool
	// Current is the filesystem's size: while a resize runs, its size
	// before the resize.
	Current uint64
	// Target is the size the last resize was asked for (0 if none was).
	Target uint64
	// Err is how the last resize failed, nil if it did not.
	Err error
}

// Resize starts resizing the stateful filesystem to size bytes (rounded
// down to its block size) and returns once it runs; ResizeStatus follows
// it. Growing is online (resize2fs on the mounted filesystem), after
// waiting, up to Config.DiskWait, for the disk to be at least size:
// the host grows the disk first. Shrinking is not, since ext4 cannot
// shrink mounted: the filesystem is unmounted (refused while anything
// holds it; the storage balloon is let go), checked (e2fsck -f),
// resized and mounted again, and the calls that need it mounted fail
// meanwhile.
//
// Errors: size 0 is InvalidArgument; no stateful disk is ErrNoStateful;
// a resize running is ErrResizeRunning. Anything else is why this resize
// could not start (a size below the filesystem's minimum or beyond the
// disk, the filesystem busy), which Maitred reports as FAILED.
func (s *Stateful) Resize(ctx context.Context, size uint64) error {
	if size == 0 {
		return errdefs.InvalidArgument("size", "must not be 0")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resize.running {
		return ErrResizeRunning
	}
	dev, err := s.mountedDev()
	if err != nil {
		return err
	}
	sb, err := readSuperblock(dev)
	if err != nil {
		return fmt.Errorf("stateful filesystem: %w", err)
	}
	blocks := size / sb.blockSize
	switch {
	case blocks == sb.blocks:
		s.resize = resizeState{before: sb.bytes(), target: size}
		s.log.Info("stateful filesystem already at the size asked for", "bytes", sb.bytes())
		return nil
	case blocks > sb.blocks:
		if err := s.waitDisk(ctx, dev, blocks*sb.blockSize); err != nil {
			return err
		}
		s.startResize(sb.bytes(), size, func() error { return s.resize2fs(dev, size) })
	default:
		minimum, err := s.minimumBlocks(ctx, dev)
		if err != nil {
			return err
		}
		if blocks < minimum {
			return fmt.Errorf("%d bytes is below the stateful filesystem's minimum, %d bytes", size, minimum*sb.blockSize)
		}
		s.dropBalloon()
		if err := unix.Unmount(s.cfg.MountPoint, 0); err != nil {
			return fmt.Errorf("shrinking needs the stateful filesystem unmounted: unmount %s: %w", s.cfg.MountPoint, err)
		}
		s.startResize(sb.bytes(), size, func() error { return s.shrink(dev, size) })
	}
	s.log.Info("stateful filesystem resize started", "device", dev, "from", sb.bytes(), "to", size)
	return nil
}

// startResize records a resize from before to target bytes and runs work
// in the background. Called with s.mu held.
func (s *Stateful) startResize(before, target uint64, work func() error) {
	done := make(chan struct{})
	s.resize = resizeState{running: true, before: before, target: target, done: done}
	go func() {
		err := work()
		s.mu.Lock()
		s.resize.running, s.resize.err = false, err
		s.mu.Unlock()
		close(done)
		if err != nil {
			s.log.Warn("stateful filesystem resize failed", "to", target, "err", err)
		} else {
			s.log.Info("stateful filesystem resized", "to", target)
		}
	}()
}

// waitDisk waits until dev is at least size bytes, at most DiskWait,
// looking again after 0.1 s, 0.2 s, 0.4 s...
func (s *Stateful) waitDisk(ctx context.Context, dev string, size uint64) error {
	deadline := time.Now().Add(s.cfg.DiskWait)
	delay := 100 * time.Millisecond
	for {
		have, err := deviceSize(dev)
		if err != nil {
			return err
		}
		if have >= size {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%d bytes is beyond the stateful disk %s, which is %d bytes", size, dev, have)
		}
		select {
		case <-time.After(min(delay, left)):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay *= 2
	}
}

// resize2fs resizes dev's filesystem to size bytes: online if mounted.
func (s *Stateful) resize2fs(dev string, size uint64) error {
	res, err := s.run(context.Background(), "resize2fs", dev, fmt.Sprintf("%dK", size>>10))
	if err != nil {
		return err
	}
	if !res.ok() {
		return errors.New(res.String())
	}
	return nil
}

// shrink checks and shrinks dev's unmounted filesystem, then mounts it
// again whatever happened.
func (s *Stateful) shrink(dev string, size uint64) error {
	err := func() error {
		// resize2fs refuses a filesystem not checked since it was last
		// mounted.
		res, err := s.run(context.Background(), "e2fsck", "-f", "-p", dev)
		if err != nil {
			return err
		}
		if !res.fsckRepaired() {
			return fmt.Errorf("check before shrinking: %s", res)
		}
		return s.resize2fs(dev, size)
	}()
	if merr := unix.Mount(dev, s.cfg.MountPoint, "ext4", 0, mountOptions); merr != nil {
		err = errors.Join(err, fmt.Errorf("mount %s on %s again: %w", dev, s.cfg.MountPoint, merr))
	}
	return err
}

// ResizeStatus reports the last resize and the filesystem's size.
func (s *Stateful) ResizeStatus() (ResizeStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dev == "" {
		return ResizeStatus{}, ErrNoStateful
	}
	st := ResizeStatus{Running: s.resize.running, Current: s.resize.before, Target: s.resize.target, Err: s.resize.err}
	if !st.Running {
		sb, err := readSuperblock(s.dev)
		if err != nil {
			return ResizeStatus{}, fmt.Errorf("stateful filesystem: %w", err)
		}
		st.Current = sb.bytes()
	}
	return st, nil
}

// MinimumSize is the smallest size, in bytes, the stateful filesystem
// can be resized to: resize2fs -P's estimate.
func (s *Stateful) MinimumSize(ctx context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dev == "" {
		return 0, ErrNoStateful
	}
	if s.resize.running {
		// The estimate of a filesystem being resized means nothing.
		return 0, ErrResizeRunning
	}
	sb, err := readSuperblock(s.dev)
	if err != nil {
		return 0, fmt.Errorf("stateful filesystem: %w", err)
	}
	blocks, err := s.minimumBlocks(ctx, s.dev)
	if err != nil {
		return 0, err
	}
	return blocks * sb.blockSize, nil
}

// minimumBlocks runs resize2fs -P on dev.
func (s *Stateful) minimumBlocks(ctx context.Context, dev string) (uint64, error) {
	res, err := s.run(ctx, "resize2fs", "-P", dev)
	if err != nil {
		return 0, err
	}
	if !res.ok() {
		return 0, fmt.Errorf("stateful filesystem's minimum size: %s", res)
	}
	blocks, err := parseMinimum(res.output)
	if err != nil {
		return 0, fmt.Errorf("stateful filesystem's minimum size: %w", err)
	}
	return blocks, nil
}
