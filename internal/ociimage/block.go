package ociimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// BlockImage returns the read-only ext4 image of the flattened root
// filesystem of the image ref names, building it on first use (mkfs.ext4
// -d, e2fsprogs 1.43 or later) and caching it per manifest digest, so
// every container of the image shares one copy. ext4 because the guest
// kernel's initramfs loads ext4 already; erofs is measured in the
// decisions note (§21).
func (s *Store) BlockImage(ctx context.Context, ref string) (string, error) {
	s.mu.Lock()
	d, err := s.resolveLocked("image", ref)
	s.mu.Unlock()
	if err != nil {
		return "", err
	}
	unlock := s.lock(d)
	defer unlock()
	dst := s.blockPath(d)
	if st, err := os.Stat(dst); err == nil && st.Mode().IsRegular() {
		return dst, nil
	}
	mkfs := s.opts.Mkfs
	if mkfs == "" {
		if mkfs, err = exec.LookPath("mkfs.ext4"); err != nil {
			return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "building an image's block device needs mkfs.ext4 (Debian's e2fsprogs): %w", err)
		}
	}
	src := s.rootfsPath(d)
	data, inodes, err := treeSize(src)
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrInternal, "image %s: root filesystem: %w", d, err)
	}
	// ext4 metadata (inode tables at 256 bytes an inode, bitmaps, group
	// descriptors) on top of the data, directory entries (up to 64 bytes
	// a name beyond a directory's first block), and slack.
	inodes += 64
	size := data + data/16 + inodes*(256+64) + 8<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)

	f, err := os.CreateTemp(s.path("tmp"), "block-")
	if err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Truncate(size); err != nil {
		f.Close()
		return "", fmt.Errorf("image store: %w", err)
	}
	f.Close()
	args := []string{"-F", "-q", "-t", "ext4", "-b", "4096", "-m", "0", "-N", strconv.FormatInt(inodes, 10),
		"-O", "^has_journal,^resize_inode", "-E", "root_owner=0:0", "-L", "cabin-image", "-d", src, f.Name()}
	cmd := exec.CommandContext(ctx, mkfs, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", errdefs.Errorf(errdefs.ErrInternal, "image %s: mkfs.ext4: %w: %s", d, err, bytesTrim(out.Bytes()))
	}
	g, err := os.OpenFile(f.Name(), os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	if err := s.landFile(g, dst); err != nil {
		return "", err
	}
	return dst, nil
}

func (s *Store) landFile(f *os.File, dst string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("image store: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o444); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

func bytesTrim(b []byte) string {
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(bytes.TrimSpace(b))
}

// treeSize is the data a tree needs in 4 KiB blocks, and its entry count.
func treeSize(root string) (size, entries int64, err error) {
	seen := map[[2]uint64]bool{}
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		info, err := de.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !de.IsDir() {
			k := [2]uint64{st.Dev, st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		size += (info.Size() + 4095) &^ 4095
		if de.IsDir() || info.Mode()&fs.ModeSymlink != 0 {
			size += 4096
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, err
	}
	return size, entries, err
}
