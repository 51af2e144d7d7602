// Package caller is who asks something of cabind, by the kernel's word on
// the connection (SO_PEERCRED), and what it may do with host files: cabind
// runs as root and could read anything, so a file a caller names is opened
// on its behalf only if the caller could have opened it itself. The socket
// server puts the Caller of each call in its context (NewContext); the
// edges take it out (FromContext) and hand it to the domain.
package caller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Errors of Open.
var (
	ErrPermission = errors.New("permission denied for the caller")
	ErrSymlink    = errors.New("path changed while it was checked: it now holds a symbolic link")
	ErrRelative   = errors.New("path is not absolute")
	ErrNotRegular = errors.New("not a regular file")
)

// Caller is the identity of a client, from its socket credentials.
type Caller struct {
	UID  uint32
	GIDs []uint32
}

type contextKey struct{}

// NewContext returns ctx carrying c.
func NewContext(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, contextKey{}, c)
}

// FromContext returns the Caller in ctx, nil when there is none (a call
// the daemon makes itself, which is trusted).
func FromContext(ctx context.Context) *Caller {
	c, _ := ctx.Value(contextKey{}).(*Caller)
	return c
}

// Permission bits Caller checks, as in the "other" triplet of a mode.
const (
	permRead   = 4
	permSearch = 1
)

// Open opens path for reading on the caller's behalf, refusing what the
// caller could not open itself: it needs search permission on every
// directory above path and read permission on path, by the usual
// owner/group/other rules, and path must be a regular file. A nil Caller
// or root is trusted and only the file type is checked.
//
// path must have its symlinks resolved (filepath.EvalSymlinks). A link is
// judged by the directory it sits in, not by the one it leads into, so a
// link in a public directory to a file under a root-only one would pass;
// and a link swapped in after the path was resolved could lead anywhere.
// So open walks path from "/" one component at a time with openat and
// O_NOFOLLOW, checking each inode it opened: it never follows a link
// (ErrSymlink), and there is no window between a check and the open it
// guards. Hand on the file, not the path: the path may change later, the
// file stays the one checked.
//
// Errors name no path: the caller sees them, and path is where its links
// lead.
func (c *Caller) Open(path string) (*os.File, error) {
	fd, st, err := c.walk(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if !c.allowed(&st, permRead) {
		return nil, ErrPermission
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, ErrNotRegular
	}
	// Reopening through the descriptor's /proc link opens the inode fd
	// refers to, whatever its path now leads to. It is a regular file, so
	// reading it cannot block cabind or act on a device.
	return reopen(fd, unix.O_RDONLY, path)
}

// walk opens path from "/" one component at a time with openat, O_PATH
// and O_NOFOLLOW, checking the caller's search permission on each
// directory before it looks inside: the way Open and OpenDevice reach a
// file without following a link (ErrSymlink) and without a window
// between a check and the open it guards. It returns the O_PATH
// descriptor of the file, which the caller closes, and its stat.
func (c *Caller) walk(path string) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	if !filepath.IsAbs(path) {
		return -1, st, ErrRelative
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, st, err
	}
	fail := func(err error) (int, unix.Stat_t, error) {
		unix.Close(fd)
		return -1, st, err
	}
	names := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	for i, name := range names {
		// The caller may learn what a directory holds only if it may
		// search it, so check before looking inside.
		if err := c.check(fd, permSearch); err != nil {
			return fail(err)
		}
		// O_PATH opens without reading: nothing happens to a device or
		// FIFO that is only looked at.
		flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i < len(names)-1 {
			flags |= unix.O_DIRECTORY
		}
		next, err := unix.Openat(fd, name, flags, 0)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			// O_DIRECTORY|O_NOFOLLOW fails with ENOTDIR on a link.
			return fail(ErrSymlink)
		}
		if err != nil {
			return fail(err)
		}
		unix.Close(fd)
		fd = next
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	// O_PATH|O_NOFOLLOW opens a final link itself rather than failing.
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fail(ErrSymlink)
	}
	return fd, st, nil
}

// reopen opens the inode the O_PATH descriptor fd refers to, through its
// /proc link, with flags.
func reopen(fd, flags int, name string) (*os.File, error) {
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen: %w", err)
	}
	return os.NewFile(uintptr(rfd), name), nil
}

// check checks one permission bit (permRead, permSearch) on the file fd
// refers to.
func (c *Caller) check(fd int, bit uint32) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if !c.allowed(&st, bit) {
		return ErrPermission
	}
	return nil
}

// allowed checks one permission bit (permRead, permSearch) in st. A nil
// Caller and root may do anything.
func (c *Caller) allowed(st *unix.Stat_t, bit uint32) bool {
	if c == nil || c.UID == 0 {
		return true
	}
	perm := st.Mode & 0o777
	switch {
	case st.Uid == c.UID:
		return perm&(bit<<6) != 0
	case slices.Contains(c.GIDs, st.Gid):
		return perm&(bit<<3) != 0
	default:
		return perm&bit != 0
	}
}

// UserOwner is the owner id of the VMs of a caller that is not root: it
// acts as its own uid, whatever it asks.
func UserOwner(uid uint32) string { return "user-" + strconv.FormatUint(uint64(uid), 10) }

// Owner is the owner id the caller acts as, given the one a request names
// ("" when it names none). Root acts as whichever it names. Any other
// caller acts as its own (UserOwner): naming no owner or its own is the
// same, naming another is refused with errdefs.ErrPermissionDenied.
func (c *Caller) Owner(asked string) (string, error) {
	if c.Trusted() {
		return asked, nil
	}
	own := UserOwner(c.UID)
	if asked != "" && asked != own {
		return "", errdefs.Errorf(errdefs.ErrPermissionDenied,
			"owner_id %q: permission denied: uid %d acts as owner %q only", asked, c.UID, own)
	}
	return own, nil
}

// Sees tells whether the caller may see, and act on, the VMs of owner.
func (c *Caller) Sees(owner string) bool {
	return c.Trusted() || owner == UserOwner(c.UID)
}

// Trusted tells whether the caller is root, or the daemon itself (nil),
// who may act as any owner and on what all share (the guest image).
func (c *Caller) Trusted() bool { return c == nil || c.UID == 0 }
