package kata

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// errMissing reports a directory that openDir, not asked to create, found
// missing.
var errMissing = errors.New("missing")

// openDir opens the directory p (absolute and clean) as an O_PATH
// descriptor, one component at a time from "/", following no symlink: a
// symlink anywhere on the way, or a component that is not a directory, is
// refused, so that whatever the tree holds, p cannot resolve outside
// itself. With create, missing components are made (0755) and created
// tells whether p itself was; without, a missing one is errMissing.
//
// The caller works on the returned descriptor (procPath), not on p again,
// so that p cannot be swapped for a symlink in between.
func openDir(field, p string, create bool) (fd int, created bool, err error) {
	fd, err = unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("open /: %w", err)
	}
	walked := ""
	for _, name := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		walked += "/" + name
		next, made, err := openChild(fd, name, create)
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, errMissing) {
				return -1, false, err
			}
			if errors.Is(err, unix.ENOTDIR) {
				return -1, false, errdefs.InvalidArgument(field, fmt.Sprintf("%s is %s", walked, notDirKind(walked)))
			}
			return -1, false, fmt.Errorf("%s: %s: %w", field, walked, err)
		}
		fd, created = next, made
	}
	return fd, created, nil
}

// openChild opens name in the directory dirfd without following it,
// making it first if it is missing and create is set.
func openChild(dirfd int, name string, create bool) (fd int, created bool, err error) {
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	for {
		// O_PATH with O_NOFOLLOW would open a symlink itself; with
		// O_DIRECTORY too, a symlink fails with ENOTDIR.
		fd, err = unix.Openat(dirfd, name, flags, 0)
		if err == nil {
			return fd, created, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, false, err
		}
		if !create {
			return -1, false, errMissing
		}
		err = unix.Mkdirat(dirfd, name, 0o755)
		switch {
		case err == nil:
			created = true
		case errors.Is(err, unix.EEXIST):
			// Made meanwhile by someone else; open what is there.
		default:
			return -1, false, err
		}
	}
}

// notDirKind says what a path that is not a directory is, for a message.
func notDirKind(p string) string {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return "a symlink"
	}
	return "not a directory"
}

// procPath names the file an open descriptor refers to, for calls that
// take a path (mount, chmod): the kernel resolves it to that very file.
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }
