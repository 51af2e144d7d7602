package kata

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Copies in and out of a container go through its init's root
// (/proc/PID/root), the way its processes see their filesystem, mounts
// inside its mount namespace included (a tmpfs on /tmp, volumes); paths are
// resolved by the kernel with RESOLVE_IN_ROOT, so neither ".." nor a
// symlink planted in the container leads outside it. Kata's CopyFile
// writes into the guest's shared directory, not into a container, and the
// container's root is read-only more often than not: this is what reaches
// where its processes write.

// maxCopySize bounds a file copied in or out: the guest's tmpfs is its RAM.
const maxCopySize = 1 << 30

// containerRoot opens the root of id's init, which must not have exited.
// The caller closes it.
func (s *Sandbox) containerRoot(id string) (*os.File, error) {
	proc, err := s.containerProc(id)
	if err != nil {
		return nil, err
	}
	defer proc.Close()
	fd, err := unix.Openat(int(proc.Fd()), "root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("container %q: its root: %w", id, err)
	}
	return os.NewFile(uintptr(fd), "root"), nil
}

// containerProc opens /proc/PID of id's init, which must not have exited:
// the directory stays that process's even if it exits and its pid is
// reused. The caller closes it.
func (s *Sandbox) containerProc(id string) (*os.File, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	p := c.init
	removing := c.removing
	s.mu.Unlock()
	if removing {
		return nil, fmt.Errorf("container %q is being removed: %w", id, errdefs.ErrFailedPrecondition)
	}
	var proc *os.File
	err = p.guard.Do(func() error {
		fd, err := unix.Open("/proc/"+strconv.Itoa(p.pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("container %q: its process: %w", id, err)
		}
		proc = os.NewFile(uintptr(fd), "proc")
		return nil
	})
	if err != nil {
		return nil, err
	}
	if proc == nil {
		return nil, fmt.Errorf("container %q has stopped, and its filesystem with it: %w", id, errdefs.ErrFailedPrecondition)
	}
	return proc, nil
}

// checkContainerPath checks a path in a container: absolute, clean
// enough to name a file, no NUL.
func checkContainerPath(field, p string) (string, error) {
	switch {
	case p == "":
		return "", errdefs.InvalidArgument(field, "must be set")
	case !path.IsAbs(p):
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an absolute path", p))
	case strings.ContainsRune(p, 0):
		return "", errdefs.InvalidArgument(field, "holds a NUL byte")
	case len(p) > unix.PathMax:
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%d bytes; at most %d", len(p), unix.PathMax))
	}
	p = path.Clean(p)
	if p == "/" {
		return "", errdefs.InvalidArgument(field, "names the root directory, not a file")
	}
	return p, nil
}

// openInRoot opens p below root, resolved as if root were "/".
func openInRoot(root *os.File, p string, flags uint64, mode uint64) (*os.File, error) {
	rel := strings.TrimPrefix(p, "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(int(root.Fd()), rel, &unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Mode:    mode,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), p), nil
}

// fileError classifies an error about p in container id.
func fileError(id, p string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s in container %q: %w", p, id, errdefs.Errorf(errdefs.ErrNotFound, "%v", err))
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS),
		errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s in container %q: %w", p, id, errdefs.Errorf(errdefs.ErrFailedPrecondition, "%v", err))
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%s in container %q: %w", p, id, errdefs.Errorf(errdefs.ErrResourceExhausted, "%v", err))
	}
	return fmt.Errorf("%s in container %q: %w", p, id, err)
}

// FileInfo is what CopyOut says of a file before its bytes.
type FileInfo struct {
	Size int64
	Mode os.FileMode
	Mod  int64 // Unix nanoseconds
}

// CopyOut opens a regular file in a running container for reading. The
// caller reads Size bytes at most and closes it.
func (s *Sandbox) CopyOut(id, p string) (*os.File, FileInfo, error) {
	if err := checkID("container_id", id); err != nil {
		return nil, FileInfo{}, err
	}
	p, err := checkContainerPath("path", p)
	if err != nil {
		return nil, FileInfo{}, err
	}
	root, err := s.containerRoot(id)
	if err != nil {
		return nil, FileInfo{}, err
	}
	defer root.Close()
	// O_NONBLOCK: a FIFO planted at p must not hang the call.
	f, err := openInRoot(root, p, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, FileInfo{}, fileError(id, p, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, FileInfo{}, fileError(id, p, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, FileInfo{}, fmt.Errorf("%s in container %q is not a regular file (%v): %w", p, id, st.Mode().Type(), errdefs.ErrFailedPrecondition)
	}
	if st.Size() > maxCopySize {
		f.Close()
		return nil, FileInfo{}, fmt.Errorf("%s in container %q: %d bytes; at most %d: %w", p, id, st.Size(), maxCopySize, errdefs.ErrResourceExhausted)
	}
	return f, FileInfo{Size: st.Size(), Mode: st.Mode(), Mod: st.ModTime().UnixNano()}, nil
}

// CopyIn writes size bytes from r to p in a running container, with mode
// (masked with 07777; 0 for 0644): under a temporary name in p's
// directory, renamed over p once all came. Fewer or more bytes leave
// nothing behind.
func (s *Sandbox) CopyIn(id, p string, mode uint32, size int64, r io.Reader) (int64, error) {
	if err := checkID("container_id", id); err != nil {
		return 0, err
	}
	p, err := checkContainerPath("path", p)
	if err != nil {
		return 0, err
	}
	if size < 0 || size > maxCopySize {
		return 0, errdefs.InvalidArgument("size", fmt.Sprintf("%d; want 0 to %d", size, int64(maxCopySize)))
	}
	if mode == 0 {
		mode = 0o644
	}
	mode &= 0o7777
	root, err := s.containerRoot(id)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	dir, base := path.Split(p)
	d, err := openInRoot(root, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return 0, fileError(id, dir, err)
	}
	defer d.Close()
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := "." + base + ".cabin-" + hex.EncodeToString(rnd[:])
	if len(tmp) > 255 {
		tmp = ".cabin-" + hex.EncodeToString(rnd[:])
	}
	fd, err := unix.Openat(int(d.Fd()), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return 0, fileError(id, p, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	done := false
	defer func() {
		if !done {
			f.Close()
			unix.Unlinkat(int(d.Fd()), tmp, 0)
		}
	}()
	n, err := io.Copy(f, io.LimitReader(r, size+1))
	if err != nil {
		return n, fileError(id, p, err)
	}
	if n != size {
		return n, errdefs.InvalidArgument("size", fmt.Sprintf("%d, but %d bytes came", size, n))
	}
	// The umask took bits from mode; and setuid bits want a chmod anyway.
	if err := f.Chmod(os.FileMode(mode&0o777) | modeBits(mode)); err != nil {
		return n, fileError(id, p, err)
	}
	if err := f.Close(); err != nil {
		return n, fileError(id, p, err)
	}
	done = true
	if err := unix.Renameat(int(d.Fd()), tmp, int(d.Fd()), base); err != nil {
		unix.Unlinkat(int(d.Fd()), tmp, 0)
		return n, fileError(id, p, err)
	}
	return n, nil
}

// modeBits turns the setuid, setgid and sticky bits of a Unix mode into
// Go's.
func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}
