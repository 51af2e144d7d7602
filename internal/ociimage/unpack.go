package ociimage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Limits cap what one image may write when it is unpacked. They count
// bytes as they are written, never trusting a header's size, so a small
// compressed layer that expands to a huge one (a decompression bomb) is
// refused once it passes them.
type Limits struct {
	// MaxEntries caps the tar entries of all the image's layers together.
	MaxEntries int64
	// MaxFileSize caps one regular file.
	MaxFileSize int64
	// MaxTotalSize caps the bytes of all regular files written.
	MaxTotalSize int64
}

// DefaultLimits are generous for real images (the largest common ones
// have a few hundred thousand files and a few GiB) and stop a bomb before
// it fills a disk.
var DefaultLimits = Limits{MaxEntries: 1 << 20, MaxFileSize: 4 << 30, MaxTotalSize: 16 << 30}

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// perEntryOverhead bounds the tar bytes (headers, PAX records,
	// padding) read per entry beyond file contents.
	perEntryOverhead = 8 << 10
)

// unpacker applies layers in order to one root directory.
type unpacker struct {
	root   int // O_PATH descriptor of the root directory
	limits Limits
	// owners: cabind runs as root and applies the layers' owners, setuid
	// bits and security.capability; otherwise files stay cabind's and
	// those are dropped.
	owners       bool
	allowDevices bool
	log          *slog.Logger

	entries, written int64
	skipped          int // device nodes and fifos left out
	seen             map[string]bool
	dirs             []dirMeta
}

type dirMeta struct {
	name  string
	mode  uint32
	mtime time.Time
}

func newUnpacker(rootDir string, limits Limits, allowDevices bool, log *slog.Logger) (*unpacker, error) {
	fd, err := unix.Open(rootDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open rootfs %s: %w", rootDir, err)
	}
	return &unpacker{root: fd, limits: limits, owners: os.Geteuid() == 0, allowDevices: allowDevices, log: log}, nil
}

func (u *unpacker) close() { unix.Close(u.root) }

// layer applies one uncompressed layer.
func (u *unpacker) layer(r io.Reader) error {
	u.seen = map[string]bool{}
	u.dirs = u.dirs[:0]
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "layer: truncated or malformed tar: %w", err)
		}
		if u.entries++; u.entries > u.limits.MaxEntries {
			return errdefs.Errorf(errdefs.ErrResourceExhausted, "image has more than %d entries", u.limits.MaxEntries)
		}
		if err := u.entry(tr, hdr); err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
	// Directories last: writing into them changed their times, and a
	// read-only mode set early would stop what comes after.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		if err := u.dirMeta(u.dirs[i]); err != nil {
			return fmt.Errorf("directory %q: %w", u.dirs[i].name, err)
		}
	}
	return nil
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	name, err := cleanName("name", hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base)
	}
	if name == "" {
		return nil // the root itself keeps the store's owner and mode
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if !u.allowDevices {
			u.skipped++
			u.log.Warn("layer entry skipped: device nodes and fifos are not allowed", "name", name)
			return nil
		}
	}
	uid, gid := hdr.Uid, hdr.Gid
	if uid < 0 || gid < 0 || uid > 1<<32-2 || gid > 1<<32-2 {
		return errdefs.InvalidArgument("uid/gid", fmt.Sprintf("%d/%d out of range", uid, gid))
	}
	parent, err := mkdirAllInRoot(u.root, dir)
	if err != nil {
		return inRootError("parent directory", err)
	}
	defer unix.Close(parent)
	u.seen[name] = true

	var st unix.Stat_t
	exists := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	if exists && !(hdr.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		if err := removeAllAt(parent, base); err != nil {
			return fmt.Errorf("replace: %w", err)
		}
	}
	mode := u.mode(hdr)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(parent, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := u.chown(fd, uid, gid); err != nil {
			return err
		}
		u.xattrs(fd, hdr)
		if !u.owners {
			mode |= 0o700 // cabind must still be able to change what it owns
		}
		u.dirs = append(u.dirs, dirMeta{name: name, mode: mode, mtime: hdr.ModTime})
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return u.file(tr, hdr, parent, base, uid, gid, mode)
	case tar.TypeSymlink:
		if strings.IndexByte(hdr.Linkname, 0) >= 0 || hdr.Linkname == "" {
			return errdefs.InvalidArgument("linkname", "empty or holds a NUL byte")
		}
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return err
		}
		if u.owners {
			if err := unix.Fchownat(parent, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		return u.times(parent, base, hdr)
	case tar.TypeLink:
		target, err := cleanName("linkname", hdr.Linkname)
		if err != nil {
			return err
		}
		if target == "" || target == name {
			return errdefs.InvalidArgument("linkname", fmt.Sprintf("hard link %q to %q", name, hdr.Linkname))
		}
		tdir, tbase := path.Split(target)
		tparent, err := openInRoot(u.root, strings.TrimSuffix(tdir, "/"), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "hard link target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(tparent)
		var tst unix.Stat_t
		if err := unix.Fstatat(tparent, tbase, &tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "hard link target %q: %w", hdr.Linkname, err)
		}
		if tst.Mode&unix.S_IFMT == unix.S_IFDIR {
			return errdefs.InvalidArgument("linkname", fmt.Sprintf("hard link to directory %q", hdr.Linkname))
		}
		// No AT_SYMLINK_FOLLOW: a link to a symbolic link links that link.
		return unix.Linkat(tparent, tbase, parent, base, 0)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := unix.Mknodat(parent, base, kind|0o600, dev); err != nil {
			return err
		}
		if err := unix.Fchownat(parent, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && u.owners {
			return err
		}
		// base was just made a node by us and nothing else writes in
		// this tree, so following it is following nothing.
		if err := unix.Fchmodat(parent, base, mode, 0); err != nil {
			return err
		}
		return u.times(parent, base, hdr)
	default:
		return errdefs.InvalidArgument("type", fmt.Sprintf("tar entry type %q is not supported", hdr.Typeflag))
	}
}

// file writes a regular file, counting what it writes against the caps.
func (u *unpacker) file(tr *tar.Reader, hdr *tar.Header, parent int, base string, uid, gid int, mode uint32) error {
	capacity := min(u.limits.MaxFileSize, u.limits.MaxTotalSize-u.written)
	if hdr.Size > capacity {
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "file of %d bytes is over the cap (file %d, left of the image's %d)", hdr.Size, u.limits.MaxFileSize, u.limits.MaxTotalSize)
	}
	fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	n, err := io.Copy(f, io.LimitReader(tr, capacity+1))
	u.written += n
	if err != nil {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "layer: truncated or malformed tar: %w", err)
	}
	if n > capacity {
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "file is over the cap (file %d, image %d bytes)", u.limits.MaxFileSize, u.limits.MaxTotalSize)
	}
	if err := u.chown(fd, uid, gid); err != nil {
		return err
	}
	if err := f.Chmod(os.FileMode(mode&0o777) | goModeBits(mode)); err != nil {
		return err
	}
	u.xattrs(fd, hdr)
	return u.times(parent, base, hdr)
}

// dirMeta applies a directory's mode and times, unless a later entry of
// the layer replaced it.
func (u *unpacker) dirMeta(d dirMeta) error {
	dir, base := path.Split(d.name)
	parent, err := openInRoot(u.root, strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	var st unix.Stat_t
	if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	// base was just checked to be a directory and nothing else writes in
	// this tree, so following it is following nothing.
	if err := unix.Fchmodat(parent, base, d.mode, 0); err != nil {
		return err
	}
	t := unix.NsecToTimespec(d.mtime.UnixNano())
	return unix.UtimesNanoAt(parent, base, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
}

// whiteout applies ".wh.NAME" (remove NAME from the layers below) and
// ".wh..wh..opq" (hide what the layers below hold in dir).
func (u *unpacker) whiteout(dir, base string) error {
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if base != opaqueMarker && strings.HasPrefix(victim, whiteoutPrefix) {
		return nil // other aufs metadata (.wh..wh.plnk, ...) means nothing here
	}
	if victim == "" || victim == "." || victim == ".." {
		return errdefs.InvalidArgument("name", fmt.Sprintf("whiteout %q names no entry", path.Join(dir, base)))
	}
	pfd, err := openInRoot(u.root, dir, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return inRootError("whiteout in "+dir, err)
	}
	defer unix.Close(pfd)
	if base == opaqueMarker {
		return clearDirAt(pfd, ".", func(n string) bool { return u.seen[path.Join(dir, n)] })
	}
	if u.seen[path.Join(dir, victim)] {
		return nil // a whiteout hides lower layers only
	}
	return removeAllAt(pfd, victim)
}

// inRootError puts a failed lookup inside the root in a category: a path
// that does not resolve there (a dangling or looping link, a file where a
// directory should be) is the layer's fault.
func inRootError(what string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "%s: %w (links resolve inside the image)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// mode is the permission bits to apply: setuid and setgid only where the
// layer's owners are applied too.
func (u *unpacker) mode(hdr *tar.Header) uint32 {
	m := uint32(hdr.Mode) & 0o7777
	if !u.owners {
		m &^= unix.S_ISUID | unix.S_ISGID
	}
	return m
}

func goModeBits(m uint32) os.FileMode {
	var out os.FileMode
	if m&unix.S_ISUID != 0 {
		out |= os.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		out |= os.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		out |= os.ModeSticky
	}
	return out
}

func (u *unpacker) chown(fd, uid, gid int) error {
	if !u.owners {
		return nil
	}
	return unix.Fchown(fd, uid, gid)
}

// xattrs applies the layer's user.* attributes and, where owners are
// applied, security.capability (file capabilities of programs like
// ping); others (trusted.*, security.selinux, ...) describe the host they
// came from and are dropped.
func (u *unpacker) xattrs(fd int, hdr *tar.Header) {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if !strings.HasPrefix(name, "user.") && (name != "security.capability" || !u.owners) {
			continue
		}
		if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil {
			u.log.Warn("layer entry: extended attribute not applied", "name", hdr.Name, "xattr", name, "err", err)
		}
	}
}

func (u *unpacker) times(dirfd int, name string, hdr *tar.Header) error {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	return unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
}
