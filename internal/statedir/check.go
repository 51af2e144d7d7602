package statedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe is returned by Check for a state dir cabind must not use.
var ErrUnsafe = errors.New("unsafe state dir")

// Check refuses a state dir that someone other than cabind could change
// under it: one another user owns, one group or others may write to, and
// one holding a symbolic link where cabind keeps a file or directory of
// its own (a link planted as "image" once had cabind, as root, write the
// whole guest image where it pointed). uid is cabind's. The directory must
// exist; Check changes nothing.
func (r Root) Check(uid int) error {
	st, err := os.Lstat(r.dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("state dir %s is a symbolic link; give its target instead: %w", r.dir, ErrUnsafe)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir %s is not a directory: %w", r.dir, ErrUnsafe)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != uid {
		return fmt.Errorf("state dir %s belongs to uid %d, not cabind's %d: %w", r.dir, sys.Uid, uid, ErrUnsafe)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state dir %s is writable by its group or others (mode %04o): %w", r.dir, st.Mode().Perm(), ErrUnsafe)
	}
	for _, p := range r.ownPaths() {
		if err := noLink(p); err != nil {
			return err
		}
	}
	vms, err := os.ReadDir(r.VMsDir())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state dir: %w", err)
	}
	for _, e := range vms {
		d := r.VM(e.Name())
		for _, p := range append([]string{d.Path()}, d.files()...) {
			if err := noLink(p); err != nil {
				return err
			}
		}
	}
	return r.checkDisks()
}

// checkDisks refuses a symbolic link anywhere in the disk images' tree:
// the owners' directories, their locations, the images, their metadata,
// temporaries and the operations' records. cabind writes, renames and
// removes all of them as root.
func (r Root) checkDisks() error {
	owners, err := os.ReadDir(r.DisksDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	for _, o := range owners {
		dirs := []string{filepath.Join(r.DisksDir(), o.Name())}
		if o.Name() != filepath.Base(r.DiskOpsDir()) {
			for _, loc := range DiskLocations {
				dirs = append(dirs, r.DiskDir(o.Name(), loc).Path())
			}
		}
		for _, dir := range dirs {
			if err := noLink(dir); err != nil {
				return err
			}
			files, err := os.ReadDir(dir)
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("state dir: %w", err)
			}
			for _, f := range files {
				if f.Type()&fs.ModeSymlink != 0 {
					return fmt.Errorf("%s is a symbolic link where cabind keeps a file of its own: %w", filepath.Join(dir, f.Name()), ErrUnsafe)
				}
			}
		}
	}
	return nil
}

// noLink refuses p when it is a symbolic link; a p that does not exist is
// fine.
func noLink(p string) error {
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link where cabind keeps a file of its own: %w", p, ErrUnsafe)
	}
	return nil
}

// ownPaths are the fixed paths below the root that cabind creates and
// writes, directories first.
func (r Root) ownPaths() []string {
	return []string{
		r.VMsDir(), r.ImageDir(), r.LockFile(), r.NetworkAllocations(), r.CPURestrictions(),
		r.DownloadsDir(), filepath.Dir(r.KernelDir("x")), filepath.Dir(r.Initramfs("x")), filepath.Dir(r.RootfsDir("x")),
		r.ImageLock(), r.ImageManifest(), r.DisksDir(), r.DiskOpsDir(),
		filepath.Dir(r.OCIImagesDir()), r.OCIImagesDir(),
	}
}

// files are the files of a VM directory.
func (d VMDir) files() []string {
	out := []string{d.Record(), d.LockFile(), d.ConsoleLog(), d.QEMULog(), d.Forwards(), d.ReadAheadDir()}
	for n := 1; n <= MaxRotatedLogs; n++ {
		out = append(out, d.RotatedLog(n))
	}
	return append(out, d.RuntimeFiles()...)
}
