package kata

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/tarcopy"
)

// Copies of trees, both ways, as tar streams (internal/tarcopy) through the
// container's own root, as copy.go's single files: the destination and
// the source are resolved with RESOLVE_IN_ROOT; below them tarcopy
// follows no symlink at all.

// ArchiveIn says how an archive is copied into a container.
type ArchiveIn struct {
	// SourceName is the archive's top entry, placed by docker cp's rules;
	// empty: the entries go into the destination directory as named.
	SourceName string
	// ContentsOnly puts the top entry's contents, not itself.
	ContentsOnly bool
	// Archive keeps the entries' owners; otherwise the container's root
	// owns everything.
	Archive bool
	// KeepSetID keeps setuid and setgid bits.
	KeepSetID bool
}

// CopyInArchive writes the tar stream r into a running container at p.
func (s *Sandbox) CopyInArchive(id, p string, o ArchiveIn, r io.Reader) (tarcopy.Result, error) {
	var res tarcopy.Result
	err := checkID("container_id", id)
	if err != nil {
		return res, err
	}
	slash := strings.HasSuffix(p, "/")
	if path.IsAbs(p) && path.Clean(p) == "/" {
		// Into the root directory: checkContainerPath wants a file.
		p = "/"
	} else if p, err = checkContainerPath("path", p); err != nil {
		return res, err
	}
	if o.SourceName != "" {
		if n, err := tarcopy.CleanName("source_name", o.SourceName); err != nil {
			return res, err
		} else if strings.Contains(n, "/") {
			return res, errdefs.InvalidArgument("source_name", fmt.Sprintf("%q is not one name", o.SourceName))
		}
	}
	proc, err := s.containerProc(id)
	if err != nil {
		return res, err
	}
	defer proc.Close()
	root, err := openProcRoot(id, proc)
	if err != nil {
		return res, err
	}
	defer root.Close()
	owner, err := containerOwner(proc, o.Archive)
	if err != nil {
		return res, fmt.Errorf("container %q: %w", id, err)
	}
	ar, err := tarcopy.NewReader(r)
	if err != nil {
		return res, err
	}
	dir, rename, err := archiveDest(id, root, p, slash, o, ar.First())
	if err != nil {
		return res, err
	}
	defer dir.Close()
	res, err = ar.Extract(dir, tarcopy.Options{Limits: tarcopy.DefaultLimits, Rename: rename, Owner: owner, KeepSetID: o.KeepSetID})
	if err != nil {
		return res, fmt.Errorf("copy into %s in container %q: %w", p, id, err)
	}
	s.log.Info("archive copied in", "container", id, "path", p, "entries", res.Entries, "bytes", res.Bytes)
	return res, nil
}

// archiveDest opens the directory an archive whose first entry is first
// goes into, and says how its names map there.
func archiveDest(id string, root *os.File, p string, slash bool, o ArchiveIn, first *tar.Header) (*os.File, tarcopy.Rename, error) {
	if o.SourceName == "" {
		d, err := openInRoot(root, p, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, tarcopy.Rename{}, fileError(id, p, err)
		}
		return d, tarcopy.Rename{}, nil
	}
	if first.Name != o.SourceName {
		return nil, tarcopy.Rename{}, errdefs.InvalidArgument("archive", fmt.Sprintf("its first entry is %q, not source_name %q", first.Name, o.SourceName))
	}
	var dest tarcopy.Dest
	dest.TrailingSlash = slash
	if f, err := openInRoot(root, p, unix.O_PATH, 0); err == nil {
		st, serr := f.Stat()
		f.Close()
		if serr != nil {
			return nil, tarcopy.Rename{}, fileError(id, p, serr)
		}
		dest.Exists, dest.IsDir = true, st.IsDir()
	} else if !isNotExist(err) {
		return nil, tarcopy.Rename{}, fileError(id, p, err)
	}
	place, err := tarcopy.Place(dest, first.Typeflag == tar.TypeDir, o.ContentsOnly)
	if err != nil {
		return nil, tarcopy.Rename{}, fmt.Errorf("%s in container %q: %w", p, id, err)
	}
	at := p
	if place == tarcopy.AsDest {
		at = path.Dir(p)
	}
	d, err := openInRoot(root, at, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, tarcopy.Rename{}, fileError(id, at, err)
	}
	return d, tarcopy.For(place, o.SourceName, path.Base(p)), nil
}

func isNotExist(err error) bool { return errors.Is(err, unix.ENOENT) }

// CopyOutArchive writes p of a running container to w as a tar stream
// whose top entry is p's last element.
func (s *Sandbox) CopyOutArchive(id, p string, w io.Writer) (tarcopy.Result, error) {
	if err := checkID("container_id", id); err != nil {
		return tarcopy.Result{}, err
	}
	p, err := checkContainerPath("path", p)
	if err != nil {
		return tarcopy.Result{}, err
	}
	proc, err := s.containerProc(id)
	if err != nil {
		return tarcopy.Result{}, err
	}
	defer proc.Close()
	root, err := openProcRoot(id, proc)
	if err != nil {
		return tarcopy.Result{}, err
	}
	defer root.Close()
	uids, err := readIDMap(proc, "uid_map")
	if err != nil {
		return tarcopy.Result{}, err
	}
	gids, err := readIDMap(proc, "gid_map")
	if err != nil {
		return tarcopy.Result{}, err
	}
	dir, name := path.Split(p)
	d, err := openInRoot(root, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return tarcopy.Result{}, fileError(id, dir, err)
	}
	defer d.Close()
	// Owners as the container sees them, as docker cp reports them.
	ids := func(uid, gid uint32) (int, int) { return uids.inside(uid), gids.inside(gid) }
	bw := bufio.NewWriterSize(w, copyOutChunk)
	res, err := tarcopy.Write(bw, d, name, tarcopy.ArchiveOptions{Limits: tarcopy.DefaultLimits, IDs: ids})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return res, fmt.Errorf("copy %s out of container %q: %w", p, id, err)
	}
	return res, nil
}

// openProcRoot opens the root of the process whose /proc directory proc is.
func openProcRoot(id string, proc *os.File) (*os.File, error) {
	fd, err := unix.Openat(int(proc.Fd()), "root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("container %q has stopped, and its filesystem with it (%w): %w", id, err, errdefs.ErrFailedPrecondition)
	}
	return os.NewFile(uintptr(fd), "root"), nil
}

// containerOwner gives what an entry copied into the container is owned
// by: its root user (as the guest numbers it), or with keep the entry's
// own ids, mapped through the container's user namespace.
func containerOwner(proc *os.File, keep bool) (func(*tar.Header) (int, int, error), error) {
	uids, err := readIDMap(proc, "uid_map")
	if err != nil {
		return nil, err
	}
	gids, err := readIDMap(proc, "gid_map")
	if err != nil {
		return nil, err
	}
	return func(h *tar.Header) (int, int, error) {
		uid, gid := 0, 0
		if keep {
			uid, gid = h.Uid, h.Gid
		}
		u, uok := uids.outside(uid)
		g, gok := gids.outside(gid)
		if !uok || !gok {
			return 0, 0, errdefs.InvalidArgument("owner", fmt.Sprintf("%d:%d has no user in the container's user namespace", uid, gid))
		}
		return u, g, nil
	}, nil
}

// idMap is a user namespace's uid_map or gid_map: (inside, outside,
// count) ranges.
type idMap [][3]uint32

// readIDMap reads /proc/PID/uid_map or gid_map.
func readIDMap(proc *os.File, name string) (idMap, error) {
	fd, err := unix.Openat(int(proc.Fd()), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read its %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read its %s: %w", name, err)
	}
	return parseIDMap(string(b))
}

// parseIDMap parses the kernel's id map format, lines of three numbers.
func parseIDMap(s string) (idMap, error) {
	var m idMap
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("an id map line %q", line)
		}
		var r [3]uint32
		for i, v := range f {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("an id map line %q: %w", line, err)
			}
			r[i] = uint32(n)
		}
		m = append(m, r)
	}
	return m, nil
}

// outside maps an id in the namespace to the guest's.
func (m idMap) outside(id int) (int, bool) {
	if id < 0 || id > 1<<32-2 {
		return 0, false
	}
	for _, r := range m {
		if uint64(id) >= uint64(r[0]) && uint64(id) < uint64(r[0])+uint64(r[2]) {
			return int(r[1]) + id - int(r[0]), true
		}
	}
	return 0, false
}

// inside maps a guest id into the namespace; the overflow id (65534)
// where it has none, as stat in the container shows it.
func (m idMap) inside(id uint32) int {
	for _, r := range m {
		if uint64(id) >= uint64(r[1]) && uint64(id) < uint64(r[1])+uint64(r[2]) {
			return int(r[0]) + int(id) - int(r[1])
		}
	}
	return 65534
}
