package diskimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Allocation says whether an image is sparse: concierge's
// DiskImageAllocationType.
type Allocation int

const (
	// AllocAuto is sparse iff the size is 0 (chosen by cabin).
	AllocAuto Allocation = iota
	AllocSparse
	AllocPreallocate
)

// FilesystemExt4 is the one filesystem cabin makes in an image.
const FilesystemExt4 = "ext4"

// CreateRequest describes a new image.
type CreateRequest struct {
	Key
	Location Location
	Format   Format
	// Size in bytes, a multiple of 512; 0 lets cabin choose (90% of the
	// free space), sparse.
	Size       uint64
	Allocation Allocation
	// Filesystem is "" (none) or FilesystemExt4, made with MkfsOpts and
	// then tuned with Tune2fsOpts (each checked against what cabin passes
	// on).
	Filesystem  string
	MkfsOpts    []string
	Tune2fsOpts []string
	// StorageBallooning needs a sparse image.
	StorageBallooning bool
	VMType            int32
	HasVMType         bool
}

// meta is what cabin keeps beside an image.
type meta struct {
	UserChosenSize    bool   `json:"user_chosen_size"`
	Filesystem        string `json:"filesystem,omitempty"`
	VMType            int32  `json:"vm_type"`
	HasVMType         bool   `json:"has_vm_type,omitempty"`
	StorageBallooning bool   `json:"storage_ballooning,omitempty"`
}

// autoSizeShare is the share of the free space an image of no chosen size
// gets, as upstream sizes Crostini's disk; at least minAutoSize.
const (
	autoSizeShare = 0.9
	minAutoSize   = 1 << 30
)

func (r *CreateRequest) validate() error {
	if err := r.Key.Validate(); err != nil {
		return err
	}
	if !r.Location.valid() {
		return errdefs.InvalidArgument("storage_location", fmt.Sprintf("unknown location %d", r.Location))
	}
	if !r.Format.valid() {
		return errdefs.InvalidArgument("image_type", fmt.Sprintf("unknown format %d", r.Format))
	}
	switch {
	case r.Size%512 != 0:
		return errdefs.InvalidArgument("disk_size", fmt.Sprintf("%d is not a multiple of 512", r.Size))
	case r.Size > maxSize:
		return errdefs.InvalidArgument("disk_size", fmt.Sprintf("%d is more than cabin's limit of %d", r.Size, uint64(maxSize)))
	case r.Allocation == AllocPreallocate && r.Size == 0:
		return errdefs.InvalidArgument("disk_size", "a preallocated image needs a size")
	case r.Allocation < AllocAuto || r.Allocation > AllocPreallocate:
		return errdefs.InvalidArgument("allocation_type", fmt.Sprintf("unknown allocation %d", r.Allocation))
	case r.StorageBallooning && !r.sparse():
		return errdefs.InvalidArgument("storage_ballooning", "needs a sparse image")
	}
	switch r.Filesystem {
	case "":
	case FilesystemExt4:
		if err := checkFsOptions("mkfs_opts", r.MkfsOpts, mkfsOptions, mkfsExtended); err != nil {
			return err
		}
		if err := checkFsOptions("tune2fs_opts", r.Tune2fsOpts, tune2fsOptions, tune2fsExtended); err != nil {
			return err
		}
	default:
		return errdefs.InvalidArgument("filesystem_type", fmt.Sprintf("unknown filesystem %q", r.Filesystem))
	}
	return nil
}

func (r *CreateRequest) sparse() bool {
	return r.Allocation == AllocSparse || (r.Allocation == AllocAuto && r.Size == 0)
}

// CreateResult is what Create made or found.
type CreateResult struct {
	Path string
	// Existed is set when an image of the name was there already (in any
	// format or location); nothing was made.
	Existed bool
}

// Create makes an image: in a temporary, filesystem and all, renamed into
// place once complete. An image of the name in any location is left as it
// is (Existed). ErrNotEnoughSpace: a preallocated image that does not
// fit, or no room for an image of cabin's choosing.
func (s *Store) Create(ctx context.Context, req CreateRequest) (CreateResult, error) {
	if err := req.validate(); err != nil {
		return CreateResult{}, err
	}
	unlock, err := s.lock(req.Key)
	if err != nil {
		return CreateResult{}, err
	}
	defer unlock()
	if f, ok, err := s.find(req.Key); err != nil {
		return CreateResult{}, err
	} else if ok {
		return CreateResult{Path: f.path, Existed: true}, nil
	}
	dir := s.dir(req.Owner, req.Location)
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		return CreateResult{}, fmt.Errorf("disk images: %w", err)
	}
	free, err := freeSpace(dir.Path())
	if err != nil {
		return CreateResult{}, fmt.Errorf("disk images: %w", err)
	}
	size := int64(req.Size)
	if size == 0 {
		size = int64(float64(free)*autoSizeShare) &^ (1<<20 - 1)
		if size < minAutoSize {
			return CreateResult{}, notEnoughSpace("%d bytes free; an image of cabin's choosing needs at least %d", free, int64(minAutoSize)/int64(autoSizeShare*100)*100)
		}
	}
	if !req.sparse() && size+spaceMargin > free {
		return CreateResult{}, notEnoughSpace("a preallocated image of %d bytes; %d bytes free", size, free)
	}
	uuid := newUUID()
	tmp := dir.Temp(uuid)
	rawTmp := dir.Temp(newUUID())
	metaTmp := dir.TempMeta(uuid)
	final := dir.Image(req.Name, req.Format.ext())
	ok := false
	defer func() {
		os.Remove(rawTmp)
		if !ok {
			os.Remove(tmp)
			os.Remove(metaTmp)
		}
	}()
	prealloc := "off"
	if !req.sparse() {
		prealloc = "falloc"
	}
	sz := strconv.FormatInt(size, 10)
	switch {
	case req.Format == FormatRaw:
		if _, err := s.run(ctx, nil, s.tools.QemuImg, "create", "-q", "-f", "raw", "-o", "preallocation="+prealloc, tmp, sz); err != nil {
			return CreateResult{}, spaceOr(err)
		}
		if req.Filesystem == FilesystemExt4 {
			if err := s.makeFs(ctx, tmp, req); err != nil {
				return CreateResult{}, err
			}
		}
	case req.Filesystem == FilesystemExt4:
		// mkfs writes raw images only: make the filesystem in a sparse
		// raw one and convert that.
		if _, err := s.run(ctx, nil, s.tools.QemuImg, "create", "-q", "-f", "raw", rawTmp, sz); err != nil {
			return CreateResult{}, spaceOr(err)
		}
		if err := s.makeFs(ctx, rawTmp, req); err != nil {
			return CreateResult{}, err
		}
		if _, err := s.run(ctx, nil, s.tools.QemuImg, "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "preallocation="+prealloc, rawTmp, tmp); err != nil {
			return CreateResult{}, spaceOr(err)
		}
	default:
		if _, err := s.run(ctx, nil, s.tools.QemuImg, "create", "-q", "-f", "qcow2", "-o", "preallocation="+prealloc, tmp, sz); err != nil {
			return CreateResult{}, spaceOr(err)
		}
	}
	m := meta{UserChosenSize: req.Size != 0, Filesystem: req.Filesystem, VMType: req.VMType, HasVMType: req.HasVMType, StorageBallooning: req.StorageBallooning}
	if err := s.place(dir, uuid, req.Name, tmp, final, m); err != nil {
		return CreateResult{}, err
	}
	ok = true
	s.log.Info("disk image created", "image", req.Key.String(), "path", final, "format", req.Format, "size", size, "sparse", req.sparse(), "filesystem", req.Filesystem)
	return CreateResult{Path: final}, nil
}

func (s *Store) makeFs(ctx context.Context, path string, req CreateRequest) error {
	if err := s.mkfs(ctx, path, req.MkfsOpts); err != nil {
		return spaceOr(fmt.Errorf("make the filesystem: %w", err))
	}
	if err := s.tune2fs(ctx, path, req.Tune2fsOpts); err != nil {
		return fmt.Errorf("tune the filesystem: %w", err)
	}
	return nil
}

// place puts a complete image in its place: its metadata first (harmless
// alone), then the image, renamed from its temporary only if no file has
// its name, and both made durable.
func (s *Store) place(dir statedir.DiskDir, uuid, name, tmp, final string, m meta) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return spaceOr(fmt.Errorf("sync image: %w", err))
	}
	if err := writeMeta(dir, uuid, name, m); err != nil {
		return err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errdefs.Errorf(errdefs.ErrAlreadyExists, "image %s exists", name)
		}
		return fmt.Errorf("put the image in place: %w", err)
	}
	if d, err := os.Open(dir.Path()); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func (s *Store) readMeta(dir statedir.DiskDir, name string) meta {
	var m meta
	if b, err := os.ReadFile(dir.ImageMeta(name)); err == nil {
		m, _ = parseMeta(b)
	}
	return m
}

// parseMeta reads an image's metadata file. A file cabin did not write
// counts as none, not in part (json.Unmarshal fills in the fields it can
// before it reports a value of the wrong type).
func parseMeta(b []byte) (meta, error) {
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return meta{}, fmt.Errorf("image metadata: %w", err)
	}
	if m.Filesystem != "" && m.Filesystem != FilesystemExt4 {
		return meta{}, fmt.Errorf("image metadata: unknown filesystem %q", m.Filesystem)
	}
	return m, nil
}

// spaceOr makes a tool's failure for want of space ErrNotEnoughSpace.
func spaceOr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOSPC) || strings.Contains(err.Error(), "No space left on device") {
		return notEnoughSpace("%v", err)
	}
	return err
}

// lock takes key's image for an operation that is not registered (a
// create, a destroy): no other may run on it meanwhile.
func (s *Store) lock(key Key) (func(), error) {
	op := &Op{key: key, started: time.Now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[key] != nil {
		return nil, busy(key)
	}
	s.busy[key] = op
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.busy[key] == op {
			delete(s.busy, key)
		}
	}, nil
}
