package kata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// mounts is the table of mounted storages, counted by mount point: the
// sandbox and every container that lists one is a user, and the storage
// is unmounted (or its directory removed) when the last user goes.
type mounts struct {
	log *slog.Logger
	// reserved are the agent's own directories (see checkMountPoint).
	reserved []string
	// waitModules waits for the 9p module.
	waitModules func(context.Context) error
	// keep tells the storages that stay mounted once mounted (keepsMounted).
	keep func(Storage) bool
	// waitShare waits for the agent's mount of the guest image's share
	// (mounts_share.go); nil when the agent has none.
	waitShare bootcfg.ShareWait

	mu      sync.Mutex
	byPoint map[string]*mounted
}

type mounted struct {
	storage Storage
	spec    mountSpec
	users   int
	// created is set when the agent made the mount point, and removes it.
	created bool
	// kept: one of users is the VM's, never released (keepsMounted).
	kept bool
}

func newMounts(log *slog.Logger, reserved []string, waitModules func(context.Context) error) *mounts {
	return &mounts{log: log, reserved: reserved, waitModules: waitModules, keep: keepsMounted, byPoint: map[string]*mounted{}}
}

// check checks list, the storages of field, without changing anything:
// each storage, its mount point, and the directories on the way to it as
// they are now.
func (m *mounts) check(field string, list []Storage) error {
	seen := map[string]bool{}
	for i, s := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		if _, err := s.spec(f); err != nil {
			return err
		}
		if err := checkMountPoint(f+".mount_point", s.MountPoint, m.reserved); err != nil {
			return err
		}
		if seen[s.MountPoint] {
			return errdefs.InvalidArgument(f+".mount_point", fmt.Sprintf("%q is listed twice", s.MountPoint))
		}
		seen[s.MountPoint] = true
		fd, _, err := openDir(f+".mount_point", s.MountPoint, false)
		if err == nil {
			unix.Close(fd)
		} else if !errors.Is(err, errMissing) {
			return err
		}
	}
	return nil
}

// acquire mounts the storages of list not mounted yet and counts a user of
// each. It returns their mount points, for release. On failure it leaves
// everything as it was.
func (m *mounts) acquire(ctx context.Context, field string, list []Storage) ([]string, error) {
	if err := m.check(field, list); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(list, func(s Storage) bool { return s.Driver == Driver9P || isDiskDriver(s.Driver) }) {
		if err := m.waitModules(ctx); err != nil {
			return nil, err
		}
	}
	if err := m.waitShareFor(ctx, field, list); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// Conflicts first, so that one changes nothing.
	for i, s := range list {
		if have := m.byPoint[s.MountPoint]; have != nil && !have.storage.equal(s) && !m.dropIdleKept(s.MountPoint) {
			return nil, fmt.Errorf("%s[%d].mount_point: %q holds another storage (%s %q): %w",
				field, i, s.MountPoint, have.storage.Driver, have.storage.Source, errdefs.ErrAlreadyExists)
		}
	}
	var points []string
	for i, s := range list {
		if have := m.byPoint[s.MountPoint]; have != nil {
			have.users++
			points = append(points, s.MountPoint)
			continue
		}
		mt, err := m.mount(ctx, fmt.Sprintf("%s[%d]", field, i), s)
		if err != nil {
			if _, rerr := m.releaseLocked(points); rerr != nil {
				m.log.Warn("undo storages", "err", rerr)
			}
			return nil, err
		}
		m.byPoint[s.MountPoint] = mt
		m.keepMounted(mt)
		points = append(points, s.MountPoint)
	}
	return points, nil
}

// mount mounts s (or makes its directory).
func (m *mounts) mount(ctx context.Context, field string, s Storage) (*mounted, error) {
	spec, err := s.spec(field)
	if err != nil {
		return nil, err
	}
	fd, created, err := openDir(field+".mount_point", s.MountPoint, true)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	mt := &mounted{storage: s, spec: spec, users: 1, created: created}
	undo := func() {
		if created {
			unix.Rmdir(s.MountPoint)
		}
	}
	if spec.fstype == "" {
		if spec.mode != 0 {
			if err := unix.Fchmodat(unix.AT_FDCWD, procPath(fd), spec.mode, 0); err != nil {
				undo()
				return nil, fmt.Errorf("%s: chmod %s: %w", field, s.MountPoint, err)
			}
		}
		m.log.Debug("storage made", "dir", s.MountPoint)
		return mt, nil
	}
	if spec.bind {
		if err := m.bindStorage(field, spec, fd); err != nil {
			undo()
			return nil, err
		}
		return mt, nil
	}
	if other := cmp.Or(m.agentShare(spec), m.mountedTag(spec)); other != "" {
		// The kernel mounts a 9p tag once at a time (a second mount is
		// EBUSY while the first stands), so the same share at another
		// mount point is a bind of the first, with this storage's flags.
		// It outlives the first's unmount.
		if err := bindMount(other, fd, spec.flags); err != nil {
			undo()
			return nil, mountError(field, s, err)
		}
		m.log.Debug("storage bound", "source", spec.source, "from", other, "target", s.MountPoint)
		return mt, nil
	}
	if spec.disk {
		// The disk's node, waited for: the host may have just plugged it.
		if spec.source, err = findDisk(ctx, field+".source", spec.source); err != nil {
			undo()
			return nil, err
		}
	}
	if err := unix.Mount(spec.source, procPath(fd), spec.fstype, spec.flags, spec.data); err != nil {
		undo()
		return nil, mountError(field, s, err)
	}
	m.log.Debug("storage mounted", "source", spec.source, "fstype", spec.fstype, "target", s.MountPoint, "options", spec.data)
	return mt, nil
}

// mountedTag is the mount point of a 9p storage already mounted from the
// share spec mounts, or "" when there is none. Called with m.mu held.
func (m *mounts) mountedTag(spec mountSpec) string {
	if spec.fstype != fstype9P {
		return ""
	}
	for p, mt := range m.byPoint {
		if mt.spec.fstype == fstype9P && mt.spec.source == spec.source {
			return p
		}
	}
	return ""
}

// bindAttrs maps mount(2) flags to the attributes a bind takes.
var bindAttrs = []struct {
	flag uintptr
	attr uint64
}{
	{unix.MS_RDONLY, unix.MOUNT_ATTR_RDONLY},
	{unix.MS_NOSUID, unix.MOUNT_ATTR_NOSUID},
	{unix.MS_NODEV, unix.MOUNT_ATTR_NODEV},
	{unix.MS_NOEXEC, unix.MOUNT_ATTR_NOEXEC},
}

// bindMount binds the mount at from onto the directory targetFD is open
// on, with flags' per-mount flags. The copy gets them before it is
// attached (open_tree, mount_setattr, move_mount), so it is never seen
// without them, and it is attached at targetFD itself, not at a path
// that could have changed since it was checked. A share mounted
// read-only stays so through any bind of it.
func bindMount(from string, targetFD int, flags uintptr) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, from, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", from, err)
	}
	defer unix.Close(tree)
	var attr unix.MountAttr
	for _, b := range bindAttrs {
		if flags&b.flag != 0 {
			attr.Attr_set |= b.attr
		}
	}
	if attr.Attr_set != 0 {
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return fmt.Errorf("mount_setattr: %w", err)
		}
	}
	if err := unix.MoveMount(tree, "", targetFD, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// mountError gives a failed mount its category.
func mountError(field string, s Storage, err error) error {
	what := fmt.Sprintf("%s: mount %s %q on %s", field, s.Driver, s.Source, s.MountPoint)
	switch {
	case errors.Is(err, unix.ENOENT):
		// A 9p tag no device has.
		return errdefs.Errorf(errdefs.ErrNotFound, "%s: %w", what, err)
	case errors.Is(err, unix.EINVAL):
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "%s: %w", what, err)
	case errors.Is(err, unix.ENODEV):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// release drops a user of each mount point, unmounting those it was the
// last user of. It goes on past failures, reports them all, and returns
// the mount points it failed to unmount: their user is kept, for a later
// release to try again.
func (m *mounts) release(points []string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.releaseLocked(points)
}

func (m *mounts) releaseLocked(points []string) (failed []string, _ error) {
	var errs []error
	// Last mounted, first unmounted: a later storage may sit inside an
	// earlier one.
	for _, p := range slices.Backward(points) {
		mt := m.byPoint[p]
		if mt == nil {
			continue
		}
		if mt.users--; mt.users > 0 {
			continue
		}
		if err := unmount(p, mt); err != nil {
			mt.users = 1
			failed = append(failed, p)
			errs = append(errs, err)
			continue
		}
		delete(m.byPoint, p)
		m.log.Debug("storage released", "mount_point", p)
	}
	return failed, errors.Join(errs...)
}

// unmount undoes mount.
func unmount(p string, mt *mounted) error {
	if mt.spec.fstype == "" {
		if mt.created {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
		}
		return nil
	}
	err := unix.Unmount(p, unix.UMOUNT_NOFOLLOW)
	if errors.Is(err, unix.EBUSY) {
		// Something still has a file open there; it goes when that
		// closes.
		err = unix.Unmount(p, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		// EINVAL: not a mount point (any more); nothing to undo.
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	if mt.created {
		unix.Rmdir(p)
	}
	return nil
}
