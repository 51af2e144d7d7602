package diskimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/names"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Destroy removes key's image, stopping first the VM that holds it (see
// Store.StopVM). existed is false when there was none.
func (s *Store) Destroy(ctx context.Context, key Key) (existed bool, err error) {
	if err := key.Validate(); err != nil {
		return false, err
	}
	if s.Held(key) {
		if s.StopVM == nil {
			return false, errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s: its VM runs", key)
		}
		if err := s.StopVM(ctx, key.Owner, key.Name); err != nil {
			return false, fmt.Errorf("image %s: stop its VM: %w", key, err)
		}
		// The VM's hold ends once its process is gone and its resources
		// released, which follows its stop closely.
		for deadline := time.Now().Add(10 * time.Second); s.Held(key); {
			if time.Now().After(deadline) {
				return false, errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s: its VM still holds it", key)
			}
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	f, unlock, err := s.lockFound(key)
	if err != nil || unlock == nil {
		return false, err
	}
	defer unlock()
	if err := os.Remove(f.path); err != nil {
		return true, fmt.Errorf("image %s: %w", key, err)
	}
	if err := os.Remove(f.dir.ImageMeta(key.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("disk image metadata left", "image", key.String(), "err", err)
	}
	s.log.Info("disk image destroyed", "image", key.String(), "path", f.path)
	return true, nil
}

// Image describes an image as ListVmDisks does.
type Image struct {
	Name     string
	Location Location
	Format   Format
	Path     string
	// Size is the virtual size; MinSize the least it can be resized to
	// (its filesystem's minimum), 0 when not known.
	Size, MinSize int64
	// Allocated is what it takes on disk.
	Allocated      int64
	UserChosenSize bool
	VMType         int32
	HasVMType      bool
}

// Listing is the images of one owner.
type Listing struct {
	Images []Image
	// Available is the free space where the images are.
	Available int64
}

// List lists owner's images in locs (all when empty), by name, only
// named, when name is not empty. Images under a temporary name are not
// images yet and are not listed.
func (s *Store) List(ctx context.Context, owner string, locs []Location, name string) (Listing, error) {
	if name != "" {
		if err := names.Check("vm_name", name, MaxName); err != nil {
			return Listing{}, err
		}
	}
	if len(locs) == 0 {
		locs = Locations
	}
	var out Listing
	for _, loc := range locs {
		if !loc.valid() {
			return Listing{}, errdefs.InvalidArgument("storage_location", fmt.Sprintf("unknown location %d", loc))
		}
		dir := s.dir(owner, loc)
		entries, err := os.ReadDir(dir.Path())
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Listing{}, fmt.Errorf("disk images: %w", err)
		}
		for _, e := range entries {
			im, ok := s.describe(ctx, owner, dir, loc, e)
			if ok && (name == "" || im.Name == name) {
				out.Images = append(out.Images, im)
			}
		}
	}
	slices.SortFunc(out.Images, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
	// Where the images are, or would be.
	if free, err := freeSpace(s.opts.Root.Dir()); err == nil {
		out.Available = free
	}
	return out, nil
}

// describe describes the directory entry e of dir when it is an image.
func (s *Store) describe(ctx context.Context, owner string, dir statedir.DiskDir, loc Location, e os.DirEntry) (Image, bool) {
	if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
		return Image{}, false
	}
	var f Format
	var name string
	if n, ok := strings.CutSuffix(e.Name(), statedir.DiskExtRaw); ok {
		f, name = FormatRaw, n
	} else if n, ok := strings.CutSuffix(e.Name(), statedir.DiskExtQcow2); ok {
		f, name = FormatQcow2, n
	} else {
		return Image{}, false
	}
	if names.Check("vm_name", name, MaxName) != nil {
		return Image{}, false
	}
	path := dir.Image(name, f.ext())
	size, err := virtualSize(path, f)
	if err != nil {
		s.log.Warn("disk image unreadable; not listed", "path", path, "err", err)
		return Image{}, false
	}
	m := s.readMeta(dir, name)
	im := Image{
		Name: name, Location: loc, Format: f, Path: path, Size: size,
		UserChosenSize: m.UserChosenSize, VMType: m.VMType, HasVMType: m.HasVMType,
	}
	if info, err := e.Info(); err == nil {
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			im.Allocated = st.Blocks * 512
		}
	}
	// Only a raw image's filesystem can be read without attaching it;
	// an image under an operation is left alone.
	if f == FormatRaw && m.Filesystem == FilesystemExt4 && !s.Busy(Key{Owner: owner, Name: name}) {
		if min, err := s.minFsSize(ctx, path); err == nil {
			im.MinSize = min
		}
	}
	return im, true
}

// Total is what the images take on disk.
func (l Listing) Total() int64 {
	var n int64
	for _, im := range l.Images {
		n += im.Allocated
	}
	return n
}
