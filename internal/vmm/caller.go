package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

var errPermission = errors.New("permission denied for the caller")

// canRead reports whether the caller could open path for reading itself:
// search permission on every directory above it and read permission on it,
// by the usual owner/group/other rules.
func (c *Caller) canRead(path string) error {
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		if !c.allowed(dir, 1) {
			return errPermission
		}
		if dir == "/" {
			break
		}
	}
	if !c.allowed(path, 4) {
		return errPermission
	}
	return nil
}

// allowed checks one permission bit (4 read, 1 search) on path.
func (c *Caller) allowed(path string, bit os.FileMode) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
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
