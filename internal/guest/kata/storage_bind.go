package kata

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Bind storages: a directory already in the guest (a share, another
// storage, something CopyFile wrote) bound at the mount point. Kata's
// "watchable-bind" also polls a virtio-fs source for changes; a 9p share
// read with cache=none shows the host's changes as they happen, so here
// it is a bind like the other.
const (
	DriverBind          = "bind"
	DriverWatchableBind = "watchable-bind"
)

// bindSpec checks a bind storage: its source is a directory below /run/,
// as mount points are, and only per-mount flags apply.
func (s Storage) bindSpec(field string) (mountSpec, error) {
	if s.FSType != "" && s.FSType != "bind" {
		return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q for a bind; want bind or nothing", s.FSType))
	}
	if err := checkMountPoint(field+".source", s.Source, nil); err != nil {
		return mountSpec{}, err
	}
	var flags uintptr
	for _, o := range s.Options {
		f, ok := mountFlags[o]
		if !ok {
			return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q: a bind takes only mount flags (ro, nosuid, nodev, noexec, ...)", o))
		}
		flags = flags&^f.clear | f.set
	}
	return mountSpec{source: s.Source, fstype: "bind", flags: flags, bind: true}, nil
}

// bindStorage binds the directory spec.source at targetFD, reached without
// following symlinks and kept out of the agent's own directories, with the
// storage's flags set before the copy is attached.
func (m *mounts) bindStorage(field string, spec mountSpec, targetFD int) error {
	if err := checkMountPoint(field+".source", spec.source, m.reserved); err != nil {
		return err
	}
	src, _, err := openDir(field+".source", spec.source, false)
	if errors.Is(err, errMissing) {
		return errdefs.Errorf(errdefs.ErrNotFound, "%s.source: %s: no such directory", field, spec.source)
	}
	if err != nil {
		return err
	}
	defer unix.Close(src)
	tree, err := unix.OpenTree(src, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("%s: open_tree %s: %w", field, spec.source, err)
	}
	defer unix.Close(tree)
	var attr unix.MountAttr
	for _, b := range bindAttrs {
		if spec.flags&b.flag != 0 {
			attr.Attr_set |= b.attr
		}
	}
	if attr.Attr_set != 0 {
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			return fmt.Errorf("%s: mount_setattr: %w", field, err)
		}
	}
	if err := unix.MoveMount(tree, "", targetFD, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("%s: move_mount: %w", field, err)
	}
	return nil
}
