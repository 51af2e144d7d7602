package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

var (
	errPermission = errors.New("permission denied for the caller")
	errSymlink    = errors.New("path holds a symbolic link: resolve it before checking")
	errRelative   = errors.New("path is not absolute")
)

// canRead reports whether the caller could open path for reading itself:
// search permission on every directory above it and read permission on it,
// by the usual owner/group/other rules.
//
// path must have its symlinks resolved (filepath.EvalSymlinks). A link is
// judged by the directory it sits in, not by the one it leads into, so a
// link in a public directory to a file under a root-only one would pass;
// canRead refuses a path with a link in it rather than follow it.
func (c *Caller) canRead(path string) error {
	if !filepath.IsAbs(path) {
		return errRelative
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if err := c.check(dir, 1); err != nil {
			return err
		}
		if dir == "/" {
			break
		}
	}
	return c.check(path, 4)
}

// check checks one permission bit (4 read, 1 search) on path itself,
// refusing a symlink.
func (c *Caller) check(path string, bit os.FileMode) error {
	st, err := os.Lstat(path)
	if err != nil {
		return errPermission
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return errSymlink
	}
	if !c.allowed(st, bit) {
		return errPermission
	}
	return nil
}

// allowed checks one permission bit (4 read, 1 search) in st.
func (c *Caller) allowed(st os.FileInfo, bit os.FileMode) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := st.Mode().Perm()
	switch {
	case sys.Uid == c.UID:
		return perm&(bit<<6) != 0
	case slices.Contains(c.GIDs, sys.Gid):
		return perm&(bit<<3) != 0
	default:
		return perm&bit != 0
	}
}
