package diskimage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// Files a caller names on this host: an import's source is opened with
// caller.Caller.Open (read permission, no link followed); an export's
// destination is created here, the same way: cabind runs as root and
// could write anywhere, so the file is made only where the caller could
// make it itself, and given to the caller.

// openHostFile opens the file at path for reading on c's behalf. Errors
// name the path as the caller wrote it and, for a caller that is not
// root, say nothing of what it may not see.
func openHostFile(field, path string, c *caller.Caller) (*os.File, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an absolute clean path", path))
	}
	unreadable := func(err error) error {
		if c.Trusted() {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q: %v", path, err))
		}
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q: no such file, or not one the caller may read", path))
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, unreadable(errors.Unwrap(err))
	}
	f, err := c.Open(resolved)
	if errors.Is(err, caller.ErrNotRegular) {
		return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a regular file", path))
	}
	if err != nil {
		return nil, unreadable(err)
	}
	return f, nil
}

// createHostFile creates the file at path for writing on c's behalf: its
// directory must be one c may search its way to and write in, the file
// must not exist (it is never replaced), and it is made c's (uid and
// primary group). It returns the file and what names it for removal.
func createHostFile(field, path string, c *caller.Caller) (*os.File, *partialFile, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return nil, nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an absolute clean path to a file", path))
	}
	dir, name := filepath.Split(path)
	resolved, err := filepath.EvalSymlinks(dir)
	denied := func(err error) error {
		if c.Trusted() {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q: %v", path, err))
		}
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q: no such directory, or not one the caller may create files in", path))
	}
	if err != nil {
		return nil, nil, denied(errors.Unwrap(err))
	}
	dfd, err := openDir(c, resolved, true)
	if err != nil {
		return nil, nil, denied(err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EEXIST) {
		return nil, nil, errdefs.Errorf(errdefs.ErrAlreadyExists, "%s: %q exists; cabin does not replace files", field, path)
	}
	if err != nil {
		return nil, nil, denied(err)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		unix.Unlinkat(dfd, name, 0)
		return nil, nil, err
	}
	p := &partialFile{Dir: resolved, Name: name, Dev: uint64(st.Dev), Ino: st.Ino}
	if c != nil && c.UID != 0 {
		gid := -1
		if len(c.GIDs) > 0 {
			gid = int(c.GIDs[0])
		}
		if err := unix.Fchown(fd, int(c.UID), gid); err != nil {
			f.Close()
			removePartial(p)
			return nil, nil, err
		}
	}
	return f, p, nil
}

// openDir opens the directory at path (symlinks resolved) as an O_PATH
// descriptor, walking from "/" one component at a time without following
// links, checking on the way that c may search each directory, and, with
// write, that it may write in the last. A nil c or root may do anything.
func openDir(c *caller.Caller, path string, write bool) (int, error) {
	if !filepath.IsAbs(path) {
		return -1, caller.ErrRelative
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for _, name := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' }) {
		if err := allowed(c, fd, permSearch); err != nil {
			unix.Close(fd)
			return -1, err
		}
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return -1, caller.ErrSymlink
		}
		if err != nil {
			return -1, err
		}
		fd = next
	}
	perm := uint32(permSearch)
	if write {
		perm |= permWrite
	}
	if err := allowed(c, fd, perm); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Permission bits, as in the "other" triplet of a mode.
const (
	permWrite  = 2
	permSearch = 1
)

// allowed checks the permission bits in bits on the file fd refers to,
// by the owner/group/other rules (as internal/caller does; ACLs are not
// read).
func allowed(c *caller.Caller, fd int, bits uint32) error {
	if c.Trusted() {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	perm := st.Mode & 0o777
	var have uint32
	switch {
	case st.Uid == c.UID:
		have = perm >> 6
	case slices.Contains(c.GIDs, st.Gid):
		have = perm >> 3
	default:
		have = perm
	}
	if have&bits != bits {
		return caller.ErrPermission
	}
	return nil
}
