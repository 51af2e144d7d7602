package tarcopy

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// move is one rename of commit's.
type move struct {
	from, to *os.File
	name     string
}

// commit renames what the staging directory holds into dir: an entry dir
// lacks, or a non-directory over a non-directory, is renamed (atomically,
// whole trees at once); a directory both have is merged into, the one
// there keeping its owner and mode. Every conflict is found before the
// first rename, so a refused copy changes nothing. It returns the
// directories merged into, by their names below dir.
func commit(stage, dir *os.File) (map[string]bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(stage.Fd()), &st); err != nil {
		return nil, err
	}
	var moves []move
	var opened []*os.File
	defer func() {
		for _, f := range opened {
			f.Close()
		}
	}()
	merged := map[string]bool{}
	if err := plan(stage, dir, "", st.Dev, &moves, &opened, merged); err != nil {
		return nil, err
	}
	for _, m := range moves {
		if err := unix.Renameat(int(m.from.Fd()), m.name, int(m.to.Fd()), m.name); err != nil {
			return nil, fsError("move "+m.name+" into place", err)
		}
	}
	return merged, nil
}

// plan lists the moves from src into dst, rel being where dst is below
// the destination, for messages.
func plan(src, dst *os.File, rel string, dev uint64, moves *[]move, opened *[]*os.File, merged map[string]bool) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		var s, d unix.Stat_t
		if err := unix.Fstatat(int(src.Fd()), name, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		err := unix.Fstatat(int(dst.Fd()), name, &d, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			*moves = append(*moves, move{src, dst, name})
			continue
		}
		if err != nil {
			return fsError(rel+name, err)
		}
		sDir, dDir := s.Mode&unix.S_IFMT == unix.S_IFDIR, d.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case sDir && dDir:
		case sDir:
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is not a directory; cannot replace it with one", rel+name)
		case dDir:
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is a directory; cannot replace it with a file", rel+name)
		default:
			*moves = append(*moves, move{src, dst, name})
			continue
		}
		if d.Dev != dev {
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is another filesystem (a mount point); copy into it directly", rel+name)
		}
		sub, err := openDir(int(src.Fd()), name)
		if err != nil {
			return err
		}
		*opened = append(*opened, sub)
		dsub, err := openDir(int(dst.Fd()), name)
		if err != nil {
			return fsError(rel+name, err)
		}
		*opened = append(*opened, dsub)
		merged[rel+name] = true
		if err := plan(sub, dsub, rel+name+"/", dev, moves, opened, merged); err != nil {
			return err
		}
	}
	return nil
}

// openDir opens directory name in d, not through a symlink.
func openDir(d int, name string) (*os.File, error) {
	fd, err := unix.Openat(d, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// removeAt removes name in dirfd and everything below it, following no
// symlink. Directories are made writable first: a tree extracted by a
// user who is not root may hold read-only ones.
func removeAt(dirfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(dirfd, name, 0)
	}
	d, err := openDir(dirfd, name)
	if err != nil {
		return err
	}
	unix.Fchmod(int(d.Fd()), 0o700)
	names, _ := d.Readdirnames(-1)
	var errs []error
	for _, n := range names {
		if err := removeAt(int(d.Fd()), n); err != nil {
			errs = append(errs, err)
		}
	}
	d.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
	}
	return errors.Join(errs...)
}
