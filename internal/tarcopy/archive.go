package tarcopy

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// ArchiveOptions say how Write archives.
type ArchiveOptions struct {
	Limits Limits
	// As names the top entry; empty keeps its own name.
	As string
	// IDs maps an owner to the one the archive records; nil keeps it.
	IDs func(uid, gid uint32) (int, int)
}

// Write archives name in dir to w: a file, a symlink (as a link, not
// followed), or a directory and everything below it, never through a
// symlink. Sockets are skipped (a tar cannot hold one) and listed in the
// result. The archive is complete (closed) when Write returns nil.
func Write(w io.Writer, dir *os.File, name string, o ArchiveOptions) (Result, error) {
	a := &archiver{tw: tar.NewWriter(w), o: o, links: map[[2]uint64]string{}}
	top := o.As
	if top == "" {
		top = name
	}
	if err := a.walk(int(dir.Fd()), name, top); err != nil {
		return a.res, err
	}
	return a.res, a.tw.Close()
}

type archiver struct {
	tw    *tar.Writer
	o     ArchiveOptions
	res   Result
	links map[[2]uint64]string // a file's first name, by device and inode
}

// walk archives name in dirfd as arch.
func (a *archiver) walk(dirfd int, name, arch string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fsError(arch, err)
	}
	if a.res.Entries++; a.res.Entries > a.o.Limits.Entries {
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "more than %d entries to copy", a.o.Limits.Entries)
	}
	h := &tar.Header{
		Name:    arch,
		Mode:    int64(st.Mode & 0o7777),
		ModTime: time.Unix(st.Mtim.Unix()),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
	}
	if a.o.IDs != nil {
		h.Uid, h.Gid = a.o.IDs(st.Uid, st.Gid)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		h.Typeflag, h.Name = tar.TypeDir, arch+"/"
		if err := a.tw.WriteHeader(h); err != nil {
			return err
		}
		d, err := openDir(dirfd, name)
		if err != nil {
			return fsError(arch, err)
		}
		defer d.Close()
		names, err := d.Readdirnames(-1)
		if err != nil {
			return fsError(arch, err)
		}
		slices.Sort(names)
		for _, n := range names {
			if err := a.walk(int(d.Fd()), n, arch+"/"+n); err != nil {
				return err
			}
		}
		return nil
	case unix.S_IFREG:
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := a.links[key]; ok && st.Nlink > 1 {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			return a.tw.WriteHeader(h)
		}
		if st.Nlink > 1 {
			a.links[key] = arch
		}
		return a.file(dirfd, name, h, &st)
	case unix.S_IFLNK:
		buf := make([]byte, maxLinkTarget)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return fsError(arch, err)
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, string(buf[:n])
	case unix.S_IFIFO:
		h.Typeflag = tar.TypeFifo
	case unix.S_IFCHR, unix.S_IFBLK:
		h.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	default:
		a.res.Entries--
		a.res.Skipped = append(a.res.Skipped, arch)
		return nil
	}
	return a.tw.WriteHeader(h)
}

// file archives a regular file: the size it had when listed is what is
// written; one that grows meanwhile is cut there, one that shrinks is an
// error.
func (a *archiver) file(dirfd int, name string, h *tar.Header, st *unix.Stat_t) error {
	if st.Size > a.o.Limits.Bytes-a.res.Bytes {
		return errdefs.Errorf(errdefs.ErrResourceExhausted, "%s: the files to copy pass %d bytes", h.Name, a.o.Limits.Bytes)
	}
	// O_NONBLOCK: a FIFO swapped in meanwhile must not hang the copy.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fsError(h.Name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil || now.Ino != st.Ino || now.Dev != st.Dev {
		return errdefs.Errorf(errdefs.ErrUnavailable, "%s changed while it was copied", h.Name)
	}
	h.Typeflag, h.Size = tar.TypeReg, st.Size
	if err := a.tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.CopyN(a.tw, f, st.Size)
	a.res.Bytes += n
	if errors.Is(err, io.EOF) {
		return errdefs.Errorf(errdefs.ErrUnavailable, "%s shrank while it was copied", h.Name)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}
