package guestinit

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// ShareOptions are the 9p options the agent mounts the guest image's share
// with. The share is read-only and a generation never changes while a VM
// may run (cabind names it by the digest of its contents), so the guest
// may cache it (cache=loose): cabin-runtime, run for every container
// operation, is read through QEMU once, and its pages are the page
// cache's, reclaimable, not tmpfs's. A large msize moves the 7 MB binary
// in fewer requests.
const ShareOptions = "trans=virtio,version=9p2000.L,cache=loose,msize=262144"

// MountShare mounts the 9p share tagged tag read-only on target, making
// target if it is missing. The error names what is missing: the device
// (a host that gives the VM no such share) or the kernel's 9p support.
func MountShare(tag, target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount the image share: %w", err)
	}
	err := unix.Mount(tag, target, "9p", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ShareOptions)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		// Mounted already (by this agent before it was restarted, or a
		// client's storage): the tag mounts once at a time.
		if mounted, merr := mountinfo.Mounted(target); merr == nil && mounted {
			return nil
		}
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"the guest image's share (9p tag %s) is mounted elsewhere, not on %s: %w", tag, target, err)
	case errors.Is(err, unix.ENOENT):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"the guest image's share is missing: the VM has no 9p device tagged %s (cabind gives one to every VM it starts): %w", tag, err)
	case errors.Is(err, unix.ENODEV):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"the guest image's share (9p tag %s) cannot be mounted: the guest kernel has no 9p filesystem (neither built in nor loaded): %w", tag, err)
	}
	return errdefs.Errorf(errdefs.ErrFailedPrecondition, "mount the guest image's share (9p tag %s) on %s: %w", tag, target, err)
}

// Share tells whether the guest image's share is mounted. The agent's
// background work (a Background) mounts it after VmReady and sets the
// outcome; callers that need its files wait for it.
type Share struct {
	bg   *Background
	done chan struct{}
	err  error
}

// NewShare returns a share bg will mount (and Set).
func NewShare(bg *Background) *Share {
	return &Share{bg: bg, done: make(chan struct{})}
}

// Set records how mounting the share went. Call it once.
func (s *Share) Set(err error) {
	s.err = err
	close(s.done)
}

// Wait hurries the background work and waits until the share is mounted.
// Its error says why the share is not there, or is ctx's.
func (s *Share) Wait(ctx context.Context) error {
	s.bg.Hurry()
	select {
	case <-s.done:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
