package tarcopy

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Options say how Extract writes entries.
type Options struct {
	Limits Limits
	Rename Rename
	// Owner gives an entry's owner; nil leaves every entry owned as the
	// extracting process makes it.
	Owner func(h *tar.Header) (uid, gid int, err error)
	// KeepSetID keeps setuid and setgid bits; otherwise they are cleared.
	KeepSetID bool
	// SkipDevices skips device nodes (listed in Result.Skipped); otherwise
	// an archive holding one is refused.
	SkipDevices bool
}

// Result is what Extract wrote.
type Result struct {
	Entries int
	Bytes   int64
	Skipped []string
}

// Reader reads an archive whose first entry decides where it goes.
type Reader struct {
	tr    *tar.Reader
	first *tar.Header
}

// NewReader reads r's first header. An archive with no entry is refused.
func NewReader(r io.Reader) (*Reader, error) {
	tr := tar.NewReader(r)
	h, err := next(tr)
	if errors.Is(err, io.EOF) {
		return nil, errdefs.InvalidArgument("archive", "it holds no entry")
	}
	if err != nil {
		return nil, err
	}
	return &Reader{tr: tr, first: h}, nil
}

// next reads the next header that is an entry, its name cleaned.
func next(tr *tar.Reader) (*tar.Header, error) {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		if err != nil {
			return nil, readError(err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		n, err := CleanName("archive entry "+fmt.Sprintf("%q", h.Name), h.Name)
		if err != nil {
			return nil, err
		}
		h.Name = n
		return h, nil
	}
}

// readError classifies an error reading the archive: one the tar reader
// finds in the bytes is the sender's; one from below (the transport) is
// kept as it is.
func readError(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errdefs.InvalidArgument("archive", "it ends in the middle of an entry")
	case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong), errors.Is(err, tar.ErrInsecurePath):
		return errdefs.InvalidArgument("archive", err.Error())
	}
	return fmt.Errorf("read the archive: %w", err)
}

// First is the archive's first entry, its name clean.
func (r *Reader) First() *tar.Header { return r.first }

// Extract writes the archive into dir: first into a new directory inside
// dir, where every entry is resolved beneath it without following any
// symlink, then, once every entry is written, renamed into dir, entry by
// entry, merging into directories dir already has. An error before that
// point leaves dir as it was.
func (r *Reader) Extract(dir *os.File, o Options) (res Result, err error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	stageName := ".cabin-cp-" + hex.EncodeToString(rnd[:])
	dfd := int(dir.Fd())
	if err := unix.Mkdirat(dfd, stageName, 0o700); err != nil {
		return res, fsError("make a staging directory", err)
	}
	defer removeAt(dfd, stageName)
	sfd, err := unix.Openat(dfd, stageName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fsError("open the staging directory", err)
	}
	stage := os.NewFile(uintptr(sfd), stageName)
	defer stage.Close()
	x := &extractor{o: o, stage: sfd}
	for h := r.first; ; {
		if err := x.entry(r.tr, h); err != nil {
			return x.res, err
		}
		h, err = next(r.tr)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return x.res, err
		}
	}
	merged, err := commit(stage, dir)
	if err != nil {
		return x.res, err
	}
	// Modes and times last: a read-only directory would keep a user who
	// is not root from moving it, or anything out of it, and the moves
	// change the times.
	if err := x.finishDirs(dfd, merged); err != nil {
		return x.res, err
	}
	return x.res, nil
}

type extractor struct {
	o     Options
	stage int
	res   Result
	// dirs are the directories written, for their modes and times once
	// their contents are in.
	dirs []*tar.Header
}

// resolveHow resolves beneath the staging directory, through no symlink:
// the archive's own symlinks and any the container plants while it is
// written are never followed.
var resolveHow = unix.OpenHow{
	Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
}

// parent opens the directory holding n in the staging directory, making
// the missing ones on the way (archives need not list every directory).
func (x *extractor) parent(field, n string, make bool) (int, error) {
	d := path.Dir(n)
	fd, err := unix.Openat2(x.stage, d, &resolveHow)
	if err == nil || !errors.Is(err, unix.ENOENT) || !make {
		if err != nil {
			return -1, entryError(field, err)
		}
		return fd, nil
	}
	fd, err = unix.Dup(x.stage)
	if err != nil {
		return -1, err
	}
	for _, e := range strings.Split(d, "/") {
		err := unix.Mkdirat(fd, e, 0o755)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, entryError(field, err)
		}
		if err == nil && x.o.Owner != nil {
			uid, gid, oerr := x.o.Owner(&tar.Header{Typeflag: tar.TypeDir, Name: d})
			if oerr == nil {
				oerr = unix.Fchownat(fd, e, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
			}
			if oerr != nil {
				unix.Close(fd)
				return -1, entryError(field, oerr)
			}
		}
		nfd, err := unix.Openat2(fd, e, &resolveHow)
		unix.Close(fd)
		if err != nil {
			return -1, entryError(field, err)
		}
		fd = nfd
	}
	return fd, nil
}

// entry writes one entry.
func (x *extractor) entry(tr *tar.Reader, h *tar.Header) error {
	field := fmt.Sprintf("archive entry %q", h.Name)
	if x.res.Entries++; x.res.Entries > x.o.Limits.Entries {
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "the archive has more than %d entries", x.o.Limits.Entries)
	}
	n, ok := x.o.Rename.apply(h.Name)
	if !ok {
		return errdefs.InvalidArgument(field, fmt.Sprintf("not below %q, the archive's first entry", x.o.Rename.Top))
	}
	if n == "" {
		// The top entry with Strip: its directory is the destination.
		if h.Typeflag != tar.TypeDir {
			return errdefs.InvalidArgument(field, "not a directory, so it has no contents to copy")
		}
		return nil
	}
	switch h.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		if x.o.SkipDevices {
			x.res.Skipped = append(x.res.Skipped, h.Name)
			return nil
		}
		return errdefs.InvalidArgument(field, "a device node; cabin cp copies none")
	case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	default:
		return errdefs.InvalidArgument(field, fmt.Sprintf("of type %q, which cabin cp does not copy", h.Typeflag))
	}
	if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA {
		if h.Size < 0 || h.Size > x.o.Limits.Bytes-x.res.Bytes {
			return errdefs.Errorf(errdefs.ErrResourceExhausted, "%s: the archive's files pass %d bytes", field, x.o.Limits.Bytes)
		}
	}
	pfd, err := x.parent(field, n, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	base := path.Base(n)
	if err := x.clear(field, pfd, base, h.Typeflag == tar.TypeDir); err != nil {
		return err
	}
	mode := uint32(h.Mode) & 0o7777
	if !x.o.KeepSetID {
		mode &^= unix.S_ISUID | unix.S_ISGID
	}
	var uid, gid = -1, -1
	if x.o.Owner != nil {
		if uid, gid, err = x.o.Owner(h); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		err = unix.Mkdirat(pfd, base, 0o700)
		if errors.Is(err, unix.EEXIST) {
			err = nil
		}
		if err == nil && uid >= 0 {
			err = unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		hh := *h
		hh.Name, hh.Mode = n, int64(mode)
		x.dirs = append(x.dirs, &hh)
	case tar.TypeReg, tar.TypeRegA:
		err = x.file(tr, h, pfd, base, mode, uid, gid)
	case tar.TypeSymlink:
		if h.Linkname == "" || len(h.Linkname) > maxLinkTarget || strings.ContainsRune(h.Linkname, 0) {
			return errdefs.InvalidArgument(field, "a symlink with an empty, NUL-holding or overlong target")
		}
		err = unix.Symlinkat(h.Linkname, pfd, base)
		if err == nil && uid >= 0 {
			err = unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err == nil {
			err = unix.UtimesNanoAt(pfd, base, times(h), unix.AT_SYMLINK_NOFOLLOW)
		}
	case tar.TypeLink:
		err = x.link(field, h, pfd, base)
	case tar.TypeFifo:
		err = unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0)
		if err == nil && uid >= 0 {
			err = unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err == nil {
			err = unix.Fchmodat(pfd, base, mode&0o777, 0)
		}
	}
	if err != nil {
		return entryError(field, err)
	}
	return nil
}

// clear removes what an earlier entry of the same name left, but for a
// directory the new entry is a directory too (tar's later-wins rule).
func (x *extractor) clear(field string, pfd int, base string, dir bool) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	switch {
	case isDir && dir:
		return nil
	case isDir:
		if err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err != nil {
			return errdefs.InvalidArgument(field, "replaces a directory the archive filled")
		}
		return nil
	}
	return entryError(field, unix.Unlinkat(pfd, base, 0))
}

// file writes a regular file's bytes.
func (x *extractor) file(tr *tar.Reader, h *tar.Header, pfd int, base string, mode uint32, uid, gid int) error {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	n, err := io.CopyN(f, tr, h.Size)
	x.res.Bytes += n
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return readError(err)
	}
	if uid >= 0 {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return err
		}
	}
	// After the chown, which clears set-id bits.
	if err := unix.Fchmod(fd, mode); err != nil {
		return err
	}
	return unix.Futimes(fd, timevals(h))
}

// link makes a hard link to a regular file the archive wrote before.
func (x *extractor) link(field string, h *tar.Header, pfd int, base string) error {
	target, err := CleanName(field+" link target", h.Linkname)
	if err != nil {
		return err
	}
	t, ok := x.o.Rename.apply(target)
	if !ok || t == "" {
		return errdefs.InvalidArgument(field, fmt.Sprintf("a hard link to %q, which is not in what is copied", h.Linkname))
	}
	lfd, err := x.parent(field, t, false)
	if err != nil {
		return errdefs.InvalidArgument(field, fmt.Sprintf("a hard link to %q, which the archive did not write before it", h.Linkname))
	}
	defer unix.Close(lfd)
	var st unix.Stat_t
	if err := unix.Fstatat(lfd, path.Base(t), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errdefs.InvalidArgument(field, fmt.Sprintf("a hard link to %q, which is not a regular file the archive wrote before it", h.Linkname))
	}
	return unix.Linkat(lfd, path.Base(t), pfd, base, 0)
}

// finishDirs gives the directories written their modes and times, deepest
// first, once in place below dir; those merged into directories that were
// there keep those directories' own.
func (x *extractor) finishDirs(dir int, merged map[string]bool) error {
	slices.SortStableFunc(x.dirs, func(a, b *tar.Header) int { return strings.Count(b.Name, "/") - strings.Count(a.Name, "/") })
	for _, h := range x.dirs {
		if merged[h.Name] {
			continue
		}
		field := fmt.Sprintf("archive entry %q", h.Name)
		how := resolveHow
		how.Flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
		fd, err := unix.Openat2(dir, h.Name, &how)
		if err != nil {
			return entryError(field, err)
		}
		err = unix.Fchmod(fd, uint32(h.Mode))
		if err == nil {
			err = unix.Futimes(fd, timevals(h))
		}
		unix.Close(fd)
		if err != nil {
			return entryError(field, err)
		}
	}
	return nil
}

func times(h *tar.Header) []unix.Timespec {
	return []unix.Timespec{unix.NsecToTimespec(at(h.AccessTime, h.ModTime)), unix.NsecToTimespec(h.ModTime.UnixNano())}
}

func timevals(h *tar.Header) []unix.Timeval {
	return []unix.Timeval{unix.NsecToTimeval(at(h.AccessTime, h.ModTime)), unix.NsecToTimeval(h.ModTime.UnixNano())}
}

func at(a, m time.Time) int64 {
	if a.IsZero() {
		return m.UnixNano()
	}
	return a.UnixNano()
}

// entryError classifies an error writing an entry.
func entryError(field string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument), errors.Is(err, errdefs.ErrResourceExhausted):
		return err
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EXDEV):
		return errdefs.InvalidArgument(field, "its path goes through a symlink or a non-directory")
	}
	return fsError(field, err)
}

// fsError gives an error of the filesystem its category.
func fsError(what string, err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "%s: %w", what, err)
	case errors.Is(err, unix.EROFS), errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s: %w", what, err)
	case errors.Is(err, unix.ENOENT):
		return errdefs.Errorf(errdefs.ErrNotFound, "%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
