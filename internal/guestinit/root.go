package guestinit

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RootDir is where LeaveRootfs gathers the initramfs's files, in the
// rootfs, before it makes them the guest's root. Outside it the rootfs is
// left empty and read-only, with an empty read-only filesystem over it.
const RootDir = "/.cabin-root"

// LeaveRootfs gives the guest a root that is a mount of its own, in place
// of the kernel's initial rootfs the initramfs was unpacked into.
//
// A container runtime jails a container with pivot_root(2), which refuses
// the rootfs: it is its namespace's root mount. Runtimes then fall back to
// MS_MOVE and chroot, which leave the guest's files right below every
// container's root: a container process with CAP_SYS_ADMIN that detaches
// its root and enters its own mount namespace finds them, writable,
// including the runtime the agent runs for every container operation.
// Here the guest's files are moved (renamed, not copied) into RootDir, a
// mount of that directory is stacked on the rootfs and made the root, so
// pivot_root works, and the rootfs below is read-only and shows nothing.
//
// It must run first, before anything is mounted on the rootfs: a mount
// point cannot be moved, and when there is one (a kernel that mounted
// devtmpfs itself) it puts back what it moved and returns why. It leaves
// a root that is not in memory alone: one on a disk, after an init before
// the agent did a switch_root, would keep the move across boots.
func LeaveRootfs(log *slog.Logger) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return err
	}
	if st.Type != unix.TMPFS_MAGIC && st.Type != unix.RAMFS_MAGIC {
		log.Debug("root is not in memory; left as it is", "fstype", fmt.Sprintf("%#x", st.Type))
		return nil
	}
	return leaveRoot()
}

// leaveRoot moves every entry of "/" into RootDir and makes a mount of
// RootDir the root. Until the new root is in place a failure puts every
// entry back, so the guest keeps the root it had.
func leaveRoot() (err error) {
	entries, err := os.ReadDir("/")
	if err != nil {
		return err
	}
	if err := os.Mkdir(RootDir, 0o755); err != nil {
		return err
	}
	// Mkdir applies the umask; the root's mode must not depend on it.
	if err := os.Chmod(RootDir, 0o755); err != nil {
		return err
	}
	var moved []string
	committed := false
	defer func() {
		if err == nil || committed {
			return
		}
		for i := len(moved) - 1; i >= 0; i-- {
			os.Rename(filepath.Join(RootDir, moved[i]), "/"+moved[i])
		}
		os.Remove(RootDir)
	}()
	for _, e := range entries {
		if "/"+e.Name() == RootDir {
			continue
		}
		if err := os.Rename("/"+e.Name(), filepath.Join(RootDir, e.Name())); err != nil {
			return err
		}
		moved = append(moved, e.Name())
	}

	// A detached mount of RootDir first: then RootDir in the rootfs can
	// be covered, while the mount still shows what is in it.
	fd, err := unix.OpenTree(unix.AT_FDCWD, RootDir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", RootDir, err)
	}
	defer unix.Close(fd)
	if err := unix.Mount("cabin-empty", RootDir, "tmpfs", unix.MS_RDONLY|nosuid|nodev|noexec, "mode=0"); err != nil {
		return fmt.Errorf("cover %s: %w", RootDir, err)
	}
	// Read-only for this mount only, not the filesystem: the new root is
	// the same filesystem and stays writable.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(RootDir, 0)
		return fmt.Errorf("make the rootfs read-only: %w", err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, "/", unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND, "")
		unix.Unmount(RootDir, 0)
		return fmt.Errorf("mount %s on /: %w", RootDir, err)
	}
	// From here the entries stay where they are: the new root shows them.
	committed = true
	// The path "/" still leads to the rootfs: a process's root is where
	// its lookups start and they do not cross a mount stacked there. The
	// new root is reached through the mount's own fd.
	if err := unix.Fchdir(fd); err != nil {
		return fmt.Errorf("enter the new root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot to the new root: %w", err)
	}
	return nil
}
