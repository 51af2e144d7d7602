package diskimage

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Resize starts resizing key's image to size bytes (a multiple of 512)
// and returns its operation; the outcome is the operation's. A raw image
// holding an ext filesystem has the filesystem resized with it: grown
// after the image, shrunk before, never below its minimum (resize2fs -P),
// which is refused at once. A qcow2 is resized with qemu-img; the
// filesystem inside one is not (only a raw image's can be reached without
// attaching it), so a qcow2 cabin made with one is refused.
//
// An image its VM holds is resized through Store.LiveResize, the
// hypervisor's block device and the guest's filesystem; without it, the
// resize is refused.
func (s *Store) Resize(ctx context.Context, key Key, size uint64) (*Op, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	switch {
	case size == 0:
		return nil, errdefs.InvalidArgument("disk_size", "must not be 0")
	case size%512 != 0:
		return nil, errdefs.InvalidArgument("disk_size", fmt.Sprintf("%d is not a multiple of 512", size))
	case size > maxSize:
		return nil, errdefs.InvalidArgument("disk_size", fmt.Sprintf("%d is more than cabin's limit of %d", size, uint64(maxSize)))
	}
	live := false
	op, opCtx, err := s.begin(s.ctx, OpResize, key, func(held bool) error {
		if held && s.LiveResize == nil {
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s: its VM runs; stop it to resize its image", key)
		}
		live = held
		return nil
	})
	if err != nil {
		return nil, err
	}
	go func() {
		err := s.resize(opCtx, op, key, int64(size), live)
		op.finish(err)
	}()
	return op, nil
}

func (s *Store) resize(ctx context.Context, op *Op, key Key, size int64, live bool) error {
	f, ok, err := s.find(key)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.Errorf(errdefs.ErrNotFound, "image %s does not exist", key)
	}
	if live {
		return s.LiveResize(ctx, key.Owner, key.Name, uint64(size))
	}
	cur, err := virtualSize(f.path, f.format)
	if err != nil {
		return err
	}
	if cur == size {
		return nil
	}
	m := s.readMeta(f.dir, key.Name)
	hasFs := m.Filesystem == FilesystemExt4
	if f.format == FormatRaw && !hasFs {
		hasFs = s.isExt(ctx, f.path)
	}
	op.setPercent(5)
	if f.format == FormatQcow2 {
		if hasFs {
			return errdefs.Errorf(errdefs.ErrNotImplemented, "image %s: resizing the filesystem inside a qcow2 image needs it attached to its VM", key)
		}
		if size > cur {
			if err := s.needSpace(f.dir.Path(), 0); err != nil {
				return err
			}
		}
		args := []string{"resize", "-q", "-f", "qcow2"}
		if size < cur {
			args = append(args, "--shrink")
		}
		_, err := s.run(ctx, nil, s.tools.QemuImg, append(args, f.path, strconv.FormatInt(size, 10))...)
		return spaceOr(err)
	}
	if !hasFs {
		return s.truncate(f.path, size)
	}
	// resize2fs works on a filesystem e2fsck passed just now.
	if err := s.fsck(ctx, f.path); err != nil {
		return fmt.Errorf("check the filesystem before resizing it: %w", err)
	}
	op.setPercent(30)
	if size < cur {
		min, err := s.minFsSize(ctx, f.path)
		if err != nil {
			return err
		}
		if size < min {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "image %s: %d bytes is below its filesystem's minimum of %d", key, size, min)
		}
		if err := s.resize2fs(ctx, f.path, size); err != nil {
			return err
		}
		op.setPercent(80)
		return s.truncate(f.path, size)
	}
	if err := s.truncate(f.path, size); err != nil {
		return err
	}
	op.setPercent(50)
	return s.resize2fs(ctx, f.path, size)
}

// resize2fs resizes the filesystem in the raw image at path to size
// bytes, given in KiB so that any block size divides it.
func (s *Store) resize2fs(ctx context.Context, path string, size int64) error {
	_, err := s.run(ctx, nil, s.tools.Resize2fs, path, strconv.FormatInt(size/1024, 10)+"K")
	return spaceOr(err)
}

// truncate sets a raw image's length: growing leaves a hole.
func (s *Store) truncate(path string, size int64) error {
	if err := os.Truncate(path, size); err != nil {
		return spaceOr(fmt.Errorf("resize image: %w", err))
	}
	return nil
}

// needSpace fails with ErrNotEnoughSpace unless the filesystem holding
// dir has n bytes free besides the margin.
func (s *Store) needSpace(dir string, n int64) error {
	free, err := freeSpace(dir)
	if err != nil {
		return err
	}
	if n+spaceMargin > free {
		return notEnoughSpace("%d bytes needed; %d free", n, free)
	}
	return nil
}
