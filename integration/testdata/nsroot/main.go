// Command nsroot goes where a container process with CAP_SYS_ADMIN and
// CAP_SYS_CHROOT can go: below the container's root, to the root mount of
// its mount namespace. It detaches the container's root, then enters the
// namespace it is in with setns(2), which puts it at the topmost mount on
// the namespace's root. It prints every regular file it finds there, a
// path a line, and "writable" if it can create a file, so a test can tell
// whether the guest's own files (the agent, the runtime, the kernel
// modules) are in reach.
package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nsroot:", err)
		os.Exit(1)
	}
}

func run() error {
	// setns to a mount namespace needs a thread whose root and working
	// directory no other thread shares; all that follows stays on it.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	fd, err := unix.Open("/proc/self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Unmount("/", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the container's root: %w", err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	err = filepath.WalkDir("/", func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil // unreadable: out of reach
		case d.IsDir() && (path == "/proc" || path == "/sys"):
			return fs.SkipDir
		case d.Type().IsRegular():
			fmt.Println(path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if f, err := os.Create("/planted"); err == nil {
		f.Close()
		fmt.Println("writable")
	}
	return nil
}
