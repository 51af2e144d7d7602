package ociimage

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// resolveInRoot is how every path of a layer is looked up: symbolic links
// (absolute ones and "..") resolve as if the root were "/", so a link
// planted by an earlier entry can never lead out of the root filesystem
// being unpacked; magic links and other mounts are refused.
const resolveInRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openInRoot opens p (clean, relative; "" is the root) below root with
// flags, resolved inside root.
func openInRoot(root int, p string, flags int) (int, error) {
	if p == "" {
		p = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveInRoot}
	for {
		fd, err := unix.Openat2(root, p, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOSYS) {
			return -1, errdefs.Errorf(errdefs.ErrNotImplemented, "open %s: the host kernel lacks openat2 (Linux 5.6), which safe unpacking needs: %w", p, err)
		}
		return fd, err
	}
}

// mkdirAllInRoot opens directory dir below root, creating what is
// missing (mode 0755), every step resolved inside root. It returns an
// O_PATH descriptor the caller closes.
func mkdirAllInRoot(root int, dir string) (int, error) {
	fd, err := openInRoot(root, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	parent, base := path.Split(dir)
	pfd, err := mkdirAllInRoot(root, strings.TrimSuffix(parent, "/"))
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	return openInRoot(root, dir, unix.O_PATH|unix.O_DIRECTORY)
}

// removeAllAt removes name in directory dirfd and, when it is a
// directory, everything below it, never following a symbolic link. A
// name that is not there is no error.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	if err := clearDirAt(dirfd, name, nil); err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// clearDirAt removes every entry of directory name in dirfd for which
// keep (given the entry's name) is false or nil.
func clearDirAt(dirfd int, name string, keep func(string) bool) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	for _, n := range names {
		if keep != nil && keep(n) {
			continue
		}
		if err := removeAllAt(fd, n); err != nil {
			return err
		}
	}
	return nil
}

// cleanName turns a name from a layer into a clean relative path ("" for
// the root). Absolute names and ".." elements are refused: no well-formed
// layer has them, and a layer that does is not trusted to mean anything
// else by its other entries.
func cleanName(field, name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q holds a NUL byte", name))
	}
	if strings.HasPrefix(name, "/") {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is an absolute path", name))
	}
	var out []string
	for _, e := range strings.Split(name, "/") {
		switch e {
		case "", ".":
			continue
		case "..":
			return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q has a \"..\" element", name))
		}
		out = append(out, e)
	}
	return strings.Join(out, "/"), nil
}
