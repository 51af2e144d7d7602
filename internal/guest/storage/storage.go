// Package storage is the guest's stateful disk, as Maitred's StartTermina
// and the calls after it use it: which virtio-blk disk it is, an ext4
// filesystem made on it only when it is blank, mounted on /mnt/stateful,
// grown to the disk, resized on request in the background (online when
// it grows, unmounted when it shrinks, as ext4 cannot shrink mounted),
// its free space, and the storage balloon that keeps the guest from
// seeing more free space than the host has.
//
// The filesystem tools are e2fsprogs' (mkfs.ext4, e2fsck, resize2fs),
// looked up in PATH; the image carries them (internal/guestimage).
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// Defaults for Config.
const (
	// MountPoint is where the stateful filesystem is mounted, as
	// upstream's maitred mounts it.
	MountPoint = "/mnt/stateful"
	SysBlock   = "/sys/block"
	DevDir     = "/dev"
	// DiskWait bounds how long a resize that grows the filesystem waits
	// for the disk to reach the new size: the host resizes the disk
	// first, and the guest's kernel learns of it a little later. Upstream
	// waits 6.3 s (0.1 s doubling, six tries).
	DiskWait = 6300 * time.Millisecond
)

// mountOptions are the stateful filesystem's: discard gives a sparse
// disk image's freed blocks back to the host, as upstream's btrfs mount
// does.
const mountOptions = "discard"

// Config is what the stateful disk needs from the agent. Zero fields take
// the defaults above; tests point the paths elsewhere.
type Config struct {
	Log *slog.Logger
	// Reaper runs the filesystem tools (PID 1 owns wait4).
	Reaper *reaper.Reaper
	// WaitModules blocks until the late modules (virtio_blk, ext4) are
	// loaded; nil when there is nothing to wait for.
	WaitModules func(context.Context) error
	// WaitShare blocks until the guest image's share, which holds the
	// filesystem tools, is mounted, and says why it is not; nil when
	// they are in PATH already.
	WaitShare bootcfg.ShareWait

	MountPoint string
	// SysBlock and DevDir are where the block devices are listed and
	// where their nodes are.
	SysBlock string
	DevDir   string
	DiskWait time.Duration
}

// Stateful is the VM's stateful disk. It knows none until Start has
// mounted one.
type Stateful struct {
	cfg Config
	log *slog.Logger

	// mu orders Start, the start of a resize, the balloon and the
	// reading of the state against each other. A resize runs without
	// it, in the background.
	mu sync.Mutex
	// dev is the stateful disk's device node, once Start has mounted it.
	dev    string
	resize resizeState
	// balloon is the storage balloon, an unnamed file on the stateful
	// filesystem (nil until UpdateStorageBalloon first asks for one).
	balloon *os.File
}

// New returns the stateful disk of a VM, with cfg's zero fields defaulted.
func New(cfg Config) *Stateful {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MountPoint == "" {
		cfg.MountPoint = MountPoint
	}
	if cfg.SysBlock == "" {
		cfg.SysBlock = SysBlock
	}
	if cfg.DevDir == "" {
		cfg.DevDir = DevDir
	}
	if cfg.DiskWait <= 0 {
		cfg.DiskWait = DiskWait
	}
	return &Stateful{cfg: cfg, log: cfg.Log}
}

// MountPoint is where the stateful filesystem is (or would be) mounted.
func (s *Stateful) MountPoint() string { return s.cfg.MountPoint }

// Close lets go of the balloon, which gives its space back. A resize
// running goes on.
func (s *Stateful) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropBalloon()
}

// ErrNoStateful is why the calls after StartTermina are refused before
// it: there is no stateful disk to act on.
var ErrNoStateful = errdefs.Errorf(errdefs.ErrFailedPrecondition, "no stateful disk is mounted: StartTermina mounts one")

// Mounted is how Start left the stateful disk.
type Mounted struct {
	// Device is the disk's node.
	Device string
	// Formatted: it was blank, and now holds a new ext4 filesystem.
	Formatted bool
	// Repaired: its filesystem did not mount until e2fsck repaired it,
	// so some data may be lost (upstream's PARTIAL_DATA_LOSS).
	Repaired bool
	// FreeBytes is the free space unprivileged users see on it.
	FreeBytes uint64
}

// Start mounts the stateful disk on the mount point: device, or, when
// device is empty, the VM's first virtio-blk disk not mounted elsewhere.
// A blank disk (nothing but zeros where any partition table or
// filesystem would leave a mark) gets an ext4 filesystem first; a disk
// holding anything else is never formatted. An ext4 filesystem that
// does not mount is repaired by e2fsck and mounted again. Once mounted,
// the filesystem is grown to the disk if the disk grew while the VM was
// off. Calling Start again with the same disk reports it as it is.
//
// Errors: a device path that is not absolute and clean, or not a block
// device, is InvalidArgument; a device that does not exist is NotFound;
// no disk, a disk holding something that is not ext4, a filesystem that
// cannot be repaired, the mount point taken by another filesystem, or a
// resize in progress are FailedPrecondition.
func (s *Stateful) Start(ctx context.Context, device string) (Mounted, error) {
	if device != "" && (!filepath.IsAbs(device) || filepath.Clean(device) != device) {
		return Mounted{}, errdefs.InvalidArgument("stateful_device", fmt.Sprintf("%q is not an absolute, clean path", device))
	}
	if s.cfg.WaitModules != nil {
		if err := s.cfg.WaitModules(ctx); err != nil {
			return Mounted{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resize.running {
		return Mounted{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "the stateful filesystem is being resized")
	}
	if device == "" {
		d, err := s.findDisk()
		if err != nil {
			return Mounted{}, err
		}
		device = d
	}
	rdev, err := blockDevice(device)
	if err != nil {
		return Mounted{}, err
	}
	if here, err := mountedOn(s.cfg.MountPoint); err != nil {
		return Mounted{}, err
	} else if here != nil {
		if here.dev != rdev {
			return Mounted{}, errdefs.Errorf(errdefs.ErrFailedPrecondition,
				"%s already holds another filesystem (%s, from %s)", s.cfg.MountPoint, here.fstype, here.source)
		}
		s.dev = device
		free, err := s.freeBytes()
		if err != nil {
			return Mounted{}, err
		}
		return Mounted{Device: device, FreeBytes: free}, nil
	}

	out := Mounted{Device: device}
	blank, err := isBlank(device)
	if err != nil {
		return Mounted{}, err
	}
	if blank {
		if err := s.mkfs(ctx, device); err != nil {
			return Mounted{}, err
		}
		out.Formatted = true
	}
	if err := os.MkdirAll(s.cfg.MountPoint, 0o755); err != nil {
		return Mounted{}, fmt.Errorf("stateful mount point: %w", err)
	}
	repaired, err := s.mount(ctx, device, !out.Formatted)
	if err != nil {
		return Mounted{}, err
	}
	out.Repaired = repaired
	s.dev = device
	s.log.Info("stateful disk mounted", "device", device, "on", s.cfg.MountPoint,
		"formatted", out.Formatted, "repaired", out.Repaired)
	s.growToDisk(ctx, device)
	if out.FreeBytes, err = s.freeBytes(); err != nil {
		return Mounted{}, err
	}
	return out, nil
}

// mount mounts device's ext4 filesystem on the mount point. When it does
// not mount and repair is allowed, e2fsck repairs it and it is mounted
// again, and repaired is true.
func (s *Stateful) mount(ctx context.Context, device string, repair bool) (repaired bool, err error) {
	err = unix.Mount(device, s.cfg.MountPoint, "ext4", 0, mountOptions)
	if err == nil {
		return false, nil
	}
	if !repair {
		return false, fmt.Errorf("mount %s, just formatted, on %s: %w", device, s.cfg.MountPoint, err)
	}
	if _, serr := readSuperblock(device); serr != nil {
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"stateful disk %s is not blank and holds no ext4 filesystem (mount: %v); it is left as it is", device, err)
	}
	if !corrupt(err) {
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition, "mount %s on %s: %w", device, s.cfg.MountPoint, err)
	}
	s.log.Warn("stateful filesystem does not mount; repairing it", "device", device, "err", err)
	// -y: repair whatever it can without asking, which may drop data;
	// upstream's analogue is btrfs's usebackuproot.
	res, rerr := s.run(ctx, "e2fsck", "-y", device)
	if rerr != nil {
		return false, rerr
	}
	if !res.fsckRepaired() {
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"stateful disk %s: its ext4 filesystem does not mount (%v) and e2fsck cannot repair it: %s", device, err, res)
	}
	if err := unix.Mount(device, s.cfg.MountPoint, "ext4", 0, mountOptions); err != nil {
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition,
			"stateful disk %s: its ext4 filesystem does not mount even after e2fsck (%s): %w", device, res, err)
	}
	// Whatever e2fsck's exit says (it reports some repairs, bad group
	// descriptor checksums among them, as nothing wrong): the filesystem
	// did not mount until repaired.
	return true, nil
}

// corrupt tells the errors mount gives for a filesystem it finds damaged.
func corrupt(err error) bool {
	for _, e := range []unix.Errno{unix.EINVAL, unix.EUCLEAN, unix.EBADMSG, unix.EIO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// mkfs makes an ext4 filesystem on device: the default usage type
// whatever the disk's size (a small disk grows later, and 1 KiB blocks
// would hold it back), no blocks reserved for root (everything in the
// VM runs as root, and the reserve would hide 5% of the disk from the
// storage balloon's arithmetic).
func (s *Stateful) mkfs(ctx context.Context, device string) error {
	res, err := s.run(ctx, "mkfs.ext4", "-q", "-T", "default", "-m", "0", device)
	if err != nil {
		return err
	}
	if !res.ok() {
		return fmt.Errorf("make an ext4 filesystem on %s: %s: %w", device, res, errdefs.ErrInternal)
	}
	s.log.Info("stateful disk formatted", "device", device)
	return nil
}

// growToDisk grows the mounted filesystem to its disk if the disk is
// larger, as upstream does at every start ("btrfs filesystem resize
// max"). A failure is logged, not returned: the filesystem is usable as
// it is.
func (s *Stateful) growToDisk(ctx context.Context, device string) {
	sb, err := readSuperblock(device)
	if err != nil {
		s.log.Warn("stateful filesystem: read superblock", "err", err)
		return
	}
	size, err := deviceSize(device)
	if err != nil {
		s.log.Warn("stateful disk: size", "err", err)
		return
	}
	if size/sb.blockSize <= sb.blocks {
		return
	}
	res, err := s.run(ctx, "resize2fs", device)
	if err == nil && !res.ok() {
		err = errors.New(res.String())
	}
	if err != nil {
		s.log.Warn("stateful filesystem: grow to the disk", "device", device, "disk_bytes", size, "err", err)
		return
	}
	s.log.Info("stateful filesystem grown to its disk", "device", device, "bytes", size/sb.blockSize*sb.blockSize)
}

// mountedDev returns the stateful disk when its filesystem is mounted on
// the mount point. Called with s.mu held.
func (s *Stateful) mountedDev() (string, error) {
	if s.dev == "" {
		return "", ErrNoStateful
	}
	rdev, err := blockDevice(s.dev)
	if err != nil {
		return "", err
	}
	here, err := mountedOn(s.cfg.MountPoint)
	if err != nil {
		return "", err
	}
	if here == nil || here.dev != rdev {
		return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "the stateful disk %s is not mounted on %s", s.dev, s.cfg.MountPoint)
	}
	return s.dev, nil
}

// freeBytes is the free space an unprivileged user sees on the mount
// point (statvfs's f_bavail), as upstream reports it.
func (s *Stateful) freeBytes() (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.cfg.MountPoint, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.cfg.MountPoint, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// AvailableSpace is the free space on the stateful filesystem.
func (s *Stateful) AvailableSpace() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.mountedDev(); err != nil {
		return 0, err
	}
	return s.freeBytes()
}
