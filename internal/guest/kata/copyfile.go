package kata

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// CopyFile is Kata's upload of a file, a directory or a symlink from the
// host (spec/semantics.md): a regular file comes in chunks, each a call
// with its offset, into a temporary file in the target's directory that
// is renamed over the target once file_size bytes have come.
//
// Where: below upstream's shared directory (kataShareDir) or below the
// mount point of a storage the sandbox holds (a container's root
// filesystem or volume is one). Within it the path is resolved as if that
// directory were "/" (openat2 RESOLVE_IN_ROOT): a symlink, planted or not,
// cannot lead out of it, and ".." stops at it. The target itself is
// replaced, never followed.

const (
	// kataShareDir is upstream's directory for what the host copies in
	// (KATA_GUEST_SHARE_DIR), made on first use.
	kataShareDir = "/run/kata-containers/shared/containers"
	// copyIdle is how long an upload may wait for its next chunk before
	// it is dropped with its temporary file.
	copyIdle = 2 * time.Minute
	// maxUploads bounds the uploads in progress, each an open file.
	maxUploads = 64
	// maxSymlink is the longest symlink target (PATH_MAX less the NUL).
	maxSymlink = 4095
)

// CopyRequest is one CopyFile call.
type CopyRequest struct {
	Path     string
	FileSize int64
	FileMode uint32
	DirMode  uint32
	// UID and GID own what is made; -1 leaves an owner as it is made
	// (root).
	UID, GID int32
	Offset   int64
	Data     []byte
}

// copies are the uploads in progress, by target path.
type copies struct {
	mu     sync.Mutex
	byPath map[string]*upload
}

// upload is a regular file being received.
type upload struct {
	path string
	// first is the first chunk's request, without its data: every later
	// chunk must agree with it.
	first CopyRequest
	dir   int      // the target's directory, O_PATH
	f     *os.File // the temporary file
	tmp   string   // its name in dir; "" for an unnamed (O_TMPFILE) one
	next  int64    // bytes received
	timer *time.Timer
}

// CopyFile applies one chunk of an upload.
func (s *Sandbox) CopyFile(ctx context.Context, r CopyRequest) error {
	kind, err := checkCopy(r)
	if err != nil {
		return err
	}
	if kind == unix.S_IFREG && r.Offset > 0 {
		return s.copyNext(r)
	}
	root, err := s.copyRoot(r.Path)
	if err != nil {
		return err
	}
	rel := strings.TrimPrefix(r.Path, root+"/")
	create := root == kataShareDir
	rootFD, _, err := openDir("path", root, create)
	if err != nil {
		return err
	}
	defer unix.Close(rootFD)
	dir, err := mkdirIn(rootFD, filepath.Dir(rel), r.DirMode&0o777, r.UID, r.GID)
	if err != nil {
		return copyError(r.Path, "make its directory", err)
	}
	base := filepath.Base(rel)
	switch kind {
	case unix.S_IFDIR:
		defer unix.Close(dir)
		return copyDir(dir, base, r)
	case unix.S_IFLNK:
		defer unix.Close(dir)
		return copySymlink(dir, base, r)
	}
	return s.copyFirst(dir, base, r)
}

// checkCopy checks r and returns the kind of file it makes.
func checkCopy(r CopyRequest) (uint32, error) {
	if err := checkAbsClean("path", r.Path); err != nil {
		return 0, err
	}
	switch {
	case r.FileSize < 0:
		return 0, errdefs.InvalidArgument("file_size", fmt.Sprintf("%d is negative", r.FileSize))
	case r.Offset < 0:
		return 0, errdefs.InvalidArgument("offset", fmt.Sprintf("%d is negative", r.Offset))
	case r.UID < -1:
		return 0, errdefs.InvalidArgument("uid", fmt.Sprintf("%d is not a user id", r.UID))
	case r.GID < -1:
		return 0, errdefs.InvalidArgument("gid", fmt.Sprintf("%d is not a group id", r.GID))
	}
	kind := r.FileMode & unix.S_IFMT
	switch kind {
	case 0, unix.S_IFREG:
		if r.Offset > r.FileSize || int64(len(r.Data)) > r.FileSize-r.Offset {
			return 0, errdefs.InvalidArgument("data", fmt.Sprintf("%d bytes at offset %d go beyond file_size %d", len(r.Data), r.Offset, r.FileSize))
		}
		return unix.S_IFREG, nil
	case unix.S_IFDIR:
		return kind, nil
	case unix.S_IFLNK:
		if len(r.Data) == 0 || len(r.Data) > maxSymlink || strings.IndexByte(string(r.Data), 0) >= 0 {
			return 0, errdefs.InvalidArgument("data", "a symlink's target: 1 to 4095 bytes, no NUL")
		}
		return kind, nil
	}
	return 0, errdefs.InvalidArgument("file_mode", fmt.Sprintf("%#o is not a regular file, directory or symlink", kind))
}

// copyRoot is the directory path is confined to: the deepest allowed one
// strictly above it.
func (s *Sandbox) copyRoot(path string) (string, error) {
	roots := []string{kataShareDir}
	s.mounts.mu.Lock()
	for p := range s.mounts.byPoint {
		roots = append(roots, p)
	}
	s.mounts.mu.Unlock()
	best := ""
	for _, r := range roots {
		if strings.HasPrefix(path, r+"/") && len(r) > len(best) {
			best = r
		}
	}
	if best == "" {
		return "", errdefs.InvalidArgument("path", fmt.Sprintf("%q is not below %s/ or a storage's mount point", path, kataShareDir))
	}
	return best, nil
}

// resolveFlags resolve a path below a root as if it were "/".
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openIn opens the directory rel below root, resolved within root.
func openIn(root int, rel string) (int, error) {
	return unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: resolveFlags,
	})
}

// mkdirIn opens the directory rel below root, making what is missing of
// it with mode and owner.
func mkdirIn(root int, rel string, mode uint32, uid, gid int32) (int, error) {
	fd, err := openIn(root, rel)
	if err == nil || !errors.Is(err, unix.ENOENT) || rel == "." {
		return fd, err
	}
	parent, err := mkdirIn(root, filepath.Dir(rel), mode, uid, gid)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	name := filepath.Base(rel)
	switch err := unix.Mkdirat(parent, name, 0o700); {
	case err == nil:
		fd, err := unix.Openat(parent, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		if err := setOwnerMode(fd, uid, gid, mode); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	case errors.Is(err, unix.EEXIST):
		// Made meanwhile, or a symlink: resolve it within the root.
		return openIn(root, rel)
	default:
		return -1, err
	}
}

// setOwnerMode gives the file fd is open on (O_PATH will do) its owner,
// then its mode: in that order, since a chown clears set-id bits.
func setOwnerMode(fd int, uid, gid int32, mode uint32) error {
	if err := unix.Fchownat(fd, "", int(uid), int(gid), unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, procPath(fd), mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// copyDir makes the directory name in dir, or keeps the one there (as
// upstream), with the request's mode and owner. Anything else there is
// replaced.
func copyDir(dir int, name string, r CopyRequest) error {
	err := unix.Mkdirat(dir, name, 0o700)
	if errors.Is(err, unix.EEXIST) {
		if uerr := unix.Unlinkat(dir, name, 0); uerr == nil {
			err = unix.Mkdirat(dir, name, 0o700)
		} else if errors.Is(uerr, unix.EISDIR) {
			err = nil
		}
	}
	if err != nil {
		return copyError(r.Path, "mkdir", err)
	}
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return copyError(r.Path, "open", err)
	}
	defer unix.Close(fd)
	if err := setOwnerMode(fd, r.UID, r.GID, r.FileMode&0o7777); err != nil {
		return copyError(r.Path, "set its mode", err)
	}
	return nil
}

// copySymlink makes name in dir a symlink to the request's data, made
// aside and renamed into place.
func copySymlink(dir int, name string, r CopyRequest) error {
	tmp, err := tempName()
	if err != nil {
		return err
	}
	if err := unix.Symlinkat(string(r.Data), dir, tmp); err != nil {
		return copyError(r.Path, "symlink", err)
	}
	if err := unix.Fchownat(dir, tmp, int(r.UID), int(r.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Unlinkat(dir, tmp, 0)
		return copyError(r.Path, "chown", err)
	}
	if err := unix.Renameat(dir, tmp, dir, name); err != nil {
		unix.Unlinkat(dir, tmp, 0)
		return copyError(r.Path, "rename", err)
	}
	return nil
}

// copyFirst starts an upload of a regular file with its first chunk,
// replacing one in progress to the same path.
func (s *Sandbox) copyFirst(dir int, name string, r CopyRequest) error {
	s.copies.mu.Lock()
	if old := s.copies.byPath[r.Path]; old != nil {
		delete(s.copies.byPath, r.Path)
		old.abort()
	}
	full := len(s.copies.byPath) >= maxUploads
	s.copies.mu.Unlock()
	if full {
		unix.Close(dir)
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "path %s: %d uploads are in progress already", r.Path, maxUploads)
	}
	u := &upload{path: r.Path, first: r, dir: dir}
	u.first.Data = nil
	if err := u.create(name); err != nil {
		unix.Close(dir)
		return copyError(r.Path, "create", err)
	}
	return s.copyChunk(u, name, r)
}

// copyNext continues the upload in progress to r.Path.
func (s *Sandbox) copyNext(r CopyRequest) error {
	s.copies.mu.Lock()
	u := s.copies.byPath[r.Path]
	delete(s.copies.byPath, r.Path)
	s.copies.mu.Unlock()
	if u == nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "path %s: no upload in progress: its first chunk has offset 0", r.Path)
	}
	f := u.first
	var err error
	switch {
	case r.FileSize != f.FileSize:
		err = errdefs.InvalidArgument("file_size", fmt.Sprintf("%d; the upload's first chunk said %d", r.FileSize, f.FileSize))
	case r.FileMode != f.FileMode || r.DirMode != f.DirMode || r.UID != f.UID || r.GID != f.GID:
		err = errdefs.InvalidArgument("file_mode", "mode, dir_mode, uid and gid must be the same in every chunk of an upload")
	case r.Offset != u.next:
		err = errdefs.InvalidArgument("offset", fmt.Sprintf("%d; the next byte of the upload is %d (chunks come in order, without gaps)", r.Offset, u.next))
	}
	if err != nil {
		u.abort()
		return fmt.Errorf("%s: upload dropped: %w", r.Path, err)
	}
	return s.copyChunk(u, filepath.Base(r.Path), r)
}

// copyChunk writes r's data, then finishes the upload if it is complete
// or puts it back to wait for its next chunk. u is not in the table.
func (s *Sandbox) copyChunk(u *upload, name string, r CopyRequest) error {
	if _, err := u.f.WriteAt(r.Data, r.Offset); err != nil {
		u.abort()
		return copyError(r.Path, "write", err)
	}
	u.next += int64(len(r.Data))
	if u.next == u.first.FileSize {
		err := u.finish(name)
		u.abort()
		return err
	}
	s.copies.mu.Lock()
	defer s.copies.mu.Unlock()
	if s.copies.byPath == nil {
		s.copies.byPath = map[string]*upload{}
	}
	if old := s.copies.byPath[u.path]; old != nil {
		// Another upload of the path started meanwhile; the later wins.
		u.abort()
		return fmt.Errorf("%s: another upload of it started: %w", u.path, errdefs.ErrAlreadyExists)
	}
	s.copies.byPath[u.path] = u
	if u.timer == nil {
		u.timer = time.AfterFunc(copyIdle, func() { s.expire(u) })
	} else {
		u.timer.Reset(copyIdle)
	}
	return nil
}

// expire drops u if it is still waiting for a chunk.
func (s *Sandbox) expire(u *upload) {
	s.copies.mu.Lock()
	waiting := s.copies.byPath[u.path] == u
	if waiting {
		delete(s.copies.byPath, u.path)
	}
	s.copies.mu.Unlock()
	if waiting {
		s.log.Warn("copy file: upload abandoned", "path", u.path, "received", u.next, "size", u.first.FileSize)
		u.abort()
	}
}

// create makes the temporary file: unnamed where the filesystem can, so
// that nothing is left if the agent dies; else named, and removed on
// abort.
func (u *upload) create(name string) error {
	fd, err := unix.Openat(u.dir, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if u.tmp, err = tempName(); err != nil {
			return err
		}
		fd, err = unix.Openat(u.dir, u.tmp, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			u.tmp = ""
			return err
		}
	}
	u.f = os.NewFile(uintptr(fd), name)
	return nil
}

// finish gives the complete file its owner and mode and renames it over
// the target.
func (u *upload) finish(name string) error {
	r := u.first
	if err := u.f.Sync(); err != nil {
		return copyError(r.Path, "sync", err)
	}
	if err := setOwnerMode(int(u.f.Fd()), r.UID, r.GID, r.FileMode&0o7777); err != nil {
		return copyError(r.Path, "set its mode", err)
	}
	if u.tmp == "" {
		tmp, err := tempName()
		if err != nil {
			return err
		}
		// AT_EMPTY_PATH links the unnamed file itself.
		if err := unix.Linkat(int(u.f.Fd()), "", u.dir, tmp, unix.AT_EMPTY_PATH); err != nil {
			return copyError(r.Path, "link", err)
		}
		u.tmp = tmp
	}
	if err := unix.Renameat(u.dir, u.tmp, u.dir, name); err != nil {
		return copyError(r.Path, "rename", err)
	}
	u.tmp = "" // renamed: nothing to remove
	return nil
}

// abort closes u and removes its temporary file, if it has a name.
func (u *upload) abort() {
	if u.timer != nil {
		u.timer.Stop()
	}
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
	if u.tmp != "" {
		unix.Unlinkat(u.dir, u.tmp, 0)
		u.tmp = ""
	}
	if u.dir >= 0 {
		unix.Close(u.dir)
		u.dir = -1
	}
}

// tempName is a name for a file made aside, unlikely to be taken.
func tempName() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return ".cabin-copy-" + hex.EncodeToString(b[:]), nil
}

// copyError gives a failed step of a copy its category.
func copyError(path, step string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTEMPTY),
		errors.Is(err, unix.EROFS), errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "copy to %s: %s: %w", path, step, err)
	case errors.Is(err, unix.EINVAL) && step == "chown":
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "copy to %s: %s: %w", path, step, err)
	}
	return fmt.Errorf("copy to %s: %s: %w", path, step, err)
}
