package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// StatefulDisk is a resource hold that attaches the VM's stateful disk
// (its own disk image, internal/diskimage): bring-up runs StartTermina on
// it, and a live resize of the image resizes it.
type StatefulDisk interface {
	// StatefulDisk is the disk's ID (hypervisor.Disk.ID) and path; an
	// empty id when the VM has none.
	StatefulDisk() (id, path string)
}

// DiskInfo describes one of a VM's disks.
type DiskInfo struct {
	// ID is the disk's ID, which the guest reads as its serial.
	ID   string
	Path string
	// Device is the guest's name of it (/dev/vda, ...).
	Device   string
	Format   hypervisor.DiskFormat
	ReadOnly bool
	// Stateful is set for the VM's own image.
	Stateful bool
	// MountPoint is where bring-up mounts it in the guest; empty when
	// it does not.
	MountPoint string
}

// ShareInfo describes one of a VM's shared host folders.
type ShareInfo struct {
	Tag, HostDir string
	// GuestDir is where bring-up mounts it; empty for cabin's own
	// shares, which the guest's clients mount.
	GuestDir string
	ReadOnly bool
}

// recordDisk is a disk as a VM's record keeps it: what bring-up needs.
type recordDisk struct {
	ID       string     `json:"id"`
	Path     string     `json:"path"`
	Device   string     `json:"device"`
	Format   string     `json:"format"`
	ReadOnly bool       `json:"read_only,omitempty"`
	Stateful bool       `json:"stateful,omitempty"`
	Mount    *DiskMount `json:"mount,omitempty"`
}

// recordDisks records the disks the hypervisor is given, in its order
// (the guest's: the index'th is hypervisor.GuestDiskName(index)), with
// the start's mounts for its own disks (extraDiskID) and the stateful
// disk a resource attached marked.
func recordDisks(disks []hypervisor.Disk, asked []Disk, res *resource.Set) []recordDisk {
	stateful := ""
	if s, ok := resource.Find[StatefulDisk](res); ok {
		stateful, _ = s.StatefulDisk()
	}
	var out []recordDisk
	for i, d := range disks {
		r := recordDisk{
			ID: d.ID, Path: d.Path, Device: "/dev/" + hypervisor.GuestDiskName(i),
			Format: string(d.Format), ReadOnly: d.ReadOnly, Stateful: d.ID == stateful,
		}
		for j, a := range asked {
			if extraDiskID(j) == d.ID && a.Mount != nil {
				m := *a.Mount
				if d.ReadOnly {
					m.Flags |= mountReadOnly
				}
				r.Mount = &m
			}
		}
		out = append(out, r)
	}
	return out
}

// mountReadOnly is MS_RDONLY: a read-only disk is mounted read-only,
// whatever its flags said (the device refuses writes either way).
const mountReadOnly = 1

// withGuestDirs gives the records of a start's shares (tagged in order
// by openDisks) their guest folders.
func withGuestDirs(recs []recordShare, asked []Share) []recordShare {
	for i := range recs {
		for j, a := range asked {
			if recs[i].Path == a.HostDir && recs[i].Tag == shareTag(j) {
				recs[i].Guest = a.GuestDir
			}
		}
	}
	return recs
}

// diskInfo is what Info says of the record's disks and shares.
func (r *record) diskInfo() ([]DiskInfo, []ShareInfo) {
	var disks []DiskInfo
	for _, d := range r.Disks {
		in := DiskInfo{ID: d.ID, Path: d.Path, Device: d.Device, Format: hypervisor.DiskFormat(d.Format),
			ReadOnly: d.ReadOnly, Stateful: d.Stateful}
		if d.Mount != nil {
			in.MountPoint = d.Mount.Target
		}
		disks = append(disks, in)
	}
	var shares []ShareInfo
	for _, s := range r.Shares {
		shares = append(shares, ShareInfo{Tag: s.Tag, HostDir: s.Path, GuestDir: s.Guest, ReadOnly: s.ReadOnly})
	}
	return disks, shares
}

// Bounds of bring-up's storage steps. StartTermina may make a filesystem
// (mkfs.ext4 under TCG takes seconds) or repair one.
const (
	mountWait   = 30 * time.Second
	terminaWait = 2 * time.Minute
)

// bringUpStorage mounts what the record says in the guest, in upstream's
// order: the disks, then the shares, then StartTermina. Failures are
// logged; the guest is usable without them.
func (m *Manager) bringUpStorage(v *vm, g Guest, log *slog.Logger) {
	guest, ok := g.(StorageGuest)
	if !ok {
		return
	}
	v.mu.Lock()
	rec := v.rec
	var disks []recordDisk
	var shares []recordShare
	var termina bool
	var features []int32
	if rec != nil {
		disks, shares = append(disks, rec.Disks...), append(shares, rec.Shares...)
		termina, features = rec.StartTermina, rec.TerminaFeatures
	}
	v.mu.Unlock()
	stateful := ""
	for _, d := range disks {
		if d.Stateful {
			stateful = d.Device
		}
		if d.Mount == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(m.ctx, mountWait)
		err := guest.Mount(ctx, GuestMount{Source: d.Device, Target: d.Mount.Target, FSType: d.Mount.FSType,
			Flags: d.Mount.Flags, Data: d.Mount.Data})
		cancel()
		if err != nil {
			log.Warn("bring-up: mount a disk", "disk", d.ID, "device", d.Device, "target", d.Mount.Target, "err", err)
		} else {
			log.Info("bring-up: mounted a disk", "disk", d.ID, "device", d.Device, "target", d.Mount.Target)
		}
	}
	for _, s := range shares {
		n, ok := shareNumber(s.Tag)
		if !ok || s.Guest == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(m.ctx, mountWait)
		err := guest.Mount9P(ctx, n, s.Guest)
		cancel()
		if err != nil {
			log.Warn("bring-up: mount a share", "tag", s.Tag, "target", s.Guest, "err", err)
		}
	}
	if !termina && stateful == "" {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, terminaWait)
	defer cancel()
	res, err := guest.StartTermina(ctx, TerminaRequest{Device: stateful, Features: features})
	switch {
	case err != nil:
		log.Warn("bring-up: start termina", "device", stateful, "err", err)
	case res.NoContainers != "":
		// The disk is mounted; the image has no container springboard.
		log.Info("bring-up: stateful disk ready, no containers", "device", stateful, "free_bytes", res.FreeBytes, "why", res.NoContainers)
	default:
		log.Info("bring-up: termina started", "device", stateful, "free_bytes", res.FreeBytes)
	}
}

// shareTag is the tag of a start's index'th share (bootcfg.ShareTag),
// and shareNumber the share a tag names, which Mount9P takes.
func shareTag(index int) string { return bootcfg.ShareTag(uint32(index + 1)) }

func shareNumber(tag string) (uint32, bool) {
	for n := uint32(1); n <= maxShares; n++ {
		if bootcfg.ShareTag(n) == tag {
			return n, true
		}
	}
	return 0, false
}

// resizePoll is how often a live resize asks the guest how its
// filesystem's resize goes; guestCallWait bounds each call, so that a
// guest that stops answering ends the resize (the resize itself may take
// as long as resize2fs does).
const (
	resizePoll    = 100 * time.Millisecond
	guestCallWait = 30 * time.Second
)

// ResizeDisk resizes the stateful disk of the running VM key to size
// bytes, live: to grow, the hypervisor's block device first (QMP
// block_resize, which grows the image), then the guest's filesystem
// (Maitred ResizeFilesystem, polled with GetResizeStatus until done); to
// shrink, the reverse. A guest with no stateful filesystem mounted (no
// StartTermina ran) has only its device resized. It is
// diskimage.Store.LiveResize.
func (m *Manager) ResizeDisk(ctx context.Context, key Key, size uint64) error {
	v, err := m.present(ctx, key)
	if err != nil {
		return err
	}
	v.mu.Lock()
	res, hv, g, state, suspended := v.res, v.hv, v.guest, v.state, v.suspended
	v.mu.Unlock()
	if state != StateRunning && state != StateStarting {
		return fmt.Errorf("vm %s is %s: %w", key, state, errdefs.ErrFailedPrecondition)
	}
	if suspended {
		return fmt.Errorf("vm %s is suspended: its guest cannot resize its filesystem until it is resumed: %w", key, errdefs.ErrFailedPrecondition)
	}
	// A VM that stops meanwhile ends the resize at once, rather than
	// each guest call waiting out its bound.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-v.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	sd, ok := resource.Find[StatefulDisk](res)
	id := ""
	if ok {
		id, _ = sd.StatefulDisk()
	}
	if id == "" {
		return fmt.Errorf("vm %s runs without its disk image attached (it was made after the vm started): stop it to resize the image: %w", key, errdefs.ErrFailedPrecondition)
	}
	resizer, ok := hv.(hypervisor.DiskResizer)
	if !ok || hv == nil {
		return fmt.Errorf("vm %s: its hypervisor cannot resize disks: %w", key, errdefs.ErrNotImplemented)
	}
	guest, ok := g.(StorageGuest)
	if g == nil || !ok {
		return fmt.Errorf("vm %s has no guest link: %w", key, errdefs.ErrUnavailable)
	}
	cctx, ccancel := context.WithTimeout(ctx, guestCallWait)
	cur, err := guest.ResizeStatus(cctx)
	ccancel()
	mounted := err == nil
	if err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
		return fmt.Errorf("vm %s: resize status: %w", key, err)
	}
	grow := !mounted || size >= cur.Current
	if grow {
		if err := resizer.ResizeDisk(ctx, id, int64(size)); err != nil {
			return err
		}
		if !mounted {
			return nil
		}
	}
	if err := m.resizeFilesystem(ctx, guest, size); err != nil {
		if v.is(StateStopped) || v.is(StateStopping) {
			return fmt.Errorf("vm %s stopped during the resize: %w (%w)", key, errdefs.ErrFailedPrecondition, err)
		}
		return fmt.Errorf("vm %s: %w", key, err)
	}
	if !grow {
		return resizer.ResizeDisk(ctx, id, int64(size))
	}
	return nil
}

// resizeFilesystem has the guest resize its stateful filesystem to size
// bytes and waits until it is done.
func (m *Manager) resizeFilesystem(ctx context.Context, guest StorageGuest, size uint64) error {
	cctx, cancel := context.WithTimeout(ctx, guestCallWait)
	err := guest.ResizeFilesystem(cctx, size)
	cancel()
	if err != nil {
		return fmt.Errorf("resize the guest's filesystem: %w", err)
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, guestCallWait)
		st, err := guest.ResizeStatus(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("resize the guest's filesystem: %w", err)
		}
		if !st.InProgress {
			// resize2fs makes whole blocks (and may leave a
			// last group too small for its metadata): the
			// size asked, less at most a MiB.
			if st.Current > size || st.Current+1<<20 < size {
				return fmt.Errorf("the guest's filesystem is %d bytes after its resize to %d (the guest's log says why): %w",
					st.Current, size, errdefs.ErrInternal)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(resizePoll):
		}
	}
}

// StorageGuest is what bring-up and a live resize ask of a guest's
// storage (Maitred's Mount, Mount9P, StartTermina, ResizeFilesystem,
// GetResizeStatus): a Guest that has it (internal/guestlink's does) gets
// its disks mounted at bring-up and can be resized live.
type StorageGuest interface {
	// Mount mounts a block device in the guest; a failed mount's errno
	// is the error (a syscall.Errno in its chain).
	Mount(ctx context.Context, m GuestMount) error
	// Mount9P mounts the host folder shared as bootcfg.ShareTag(n) on
	// target; its errno is the error, as Mount's.
	Mount9P(ctx context.Context, n uint32, target string) error
	// StartTermina mounts the stateful disk and starts the container
	// springboard where the image has one.
	StartTermina(ctx context.Context, r TerminaRequest) (TerminaResult, error)
	// ResizeFilesystem starts resizing the stateful filesystem to size
	// bytes; ResizeStatus tells how it goes. Both fail with
	// errdefs.ErrFailedPrecondition while no stateful disk is mounted.
	ResizeFilesystem(ctx context.Context, size uint64) error
	ResizeStatus(ctx context.Context) (ResizeStatus, error)
}

// GuestMount is a mount of a block device in the guest (mount(2)'s
// arguments).
type GuestMount struct {
	Source, Target, FSType string
	Flags                  uint64
	Data                   string
}

// TerminaRequest is what StartTermina is asked: the stateful disk's
// device in the guest (empty: the guest's first disk not mounted) and
// concierge's Termina feature numbers.
type TerminaRequest struct {
	Device   string
	Features []int32
}

// TerminaResult is how StartTermina went: the stateful filesystem's free
// space and, when the disk is ready but the image cannot run containers
// (it has no tremplin), why.
type TerminaResult struct {
	FreeBytes    uint64
	NoContainers string
}

// ResizeStatus is how the stateful filesystem's resize goes: Current is
// its size (before the resize while one runs), Target the size asked.
type ResizeStatus struct {
	InProgress      bool
	Current, Target uint64
}
