package diskimage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Resource is the hold a VM keeps on its own image, the one of its name
// (concierge's stateful disk): its start fails with ErrBusy while an
// operation is under way on the image, and while it runs no operation
// that needs the VM stopped starts (see Hold). When the image exists it
// is attached, writable, as the VM's first disk (StatefulDiskID), which
// the guest's StartTermina mounts: the guest names it vda.
type Resource struct {
	Store *Store
}

// StatefulDiskID is the disk ID (hypervisor.Disk.ID, the serial the guest
// reads) of a VM's own image.
const StatefulDiskID = "stateful"

var _ resource.Kind = Resource{}

func (Resource) Name() string { return "diskimage" }

func (r Resource) Prepare(_ context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	key := Key{Owner: vm.Owner, Name: vm.Name}
	release, err := r.Store.Hold(key)
	if err != nil {
		return nil, err
	}
	h := &hold{release: release}
	// The owner's other images the start attaches are held too, so that
	// no operation starts on them while the VM has them (a destroy, an
	// export without force, an offline resize).
	for _, d := range cfg.Disks {
		f, ok := ImageFormat(r.Store.opts.Root, vm.Owner, d.Path)
		if !ok {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(d.Path), f.ext())
		rel, err := r.Store.Hold(Key{Owner: vm.Owner, Name: name})
		if err != nil {
			h.Release(context.Background())
			return nil, fmt.Errorf("disk %s: %w", d.ID, err)
		}
		h.others = append(h.others, rel)
		h.state.Others = append(h.state.Others, name)
	}
	d, ok, err := r.Store.attach(key, cfg.Disks)
	if err != nil {
		h.Release(context.Background())
		return nil, err
	}
	if ok {
		h.file = d.File
		h.state = holdState{Disk: d.ID, Path: d.Path}
		cfg.Disks = append([]hypervisor.Disk{d}, cfg.Disks...)
		vm.Log.Info("attaching the vm's disk image", "path", d.Path, "format", d.Format)
	}
	return h, nil
}

// attach opens key's image, if there is one, as a writable disk. A qcow2
// naming a backing or data file is refused before QEMU sees it, and so
// is an image the VM's start already attaches (QEMU would open it twice,
// and two writers corrupt it).
func (s *Store) attach(key Key, others []hypervisor.Disk) (hypervisor.Disk, bool, error) {
	if key.Validate() != nil {
		return hypervisor.Disk{}, false, nil // no image can have the name
	}
	f, ok, err := s.find(key)
	if err != nil || !ok {
		return hypervisor.Disk{}, false, err
	}
	file, err := os.OpenFile(f.path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return hypervisor.Disk{}, false, fmt.Errorf("open the vm's disk image: %w", err)
	}
	format := hypervisor.DiskRaw
	if f.format == FormatQcow2 {
		format = hypervisor.DiskQcow2
		if err := CheckQcow2(file); err != nil {
			file.Close()
			return hypervisor.Disk{}, false, fmt.Errorf("the vm's disk image %s: %w", f.path, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil {
		file.Close()
		return hypervisor.Disk{}, false, err
	}
	for _, o := range others {
		var ost unix.Stat_t
		if o.File != nil && unix.Fstat(int(o.File.Fd()), &ost) == nil && ost.Dev == st.Dev && ost.Ino == st.Ino {
			file.Close()
			return hypervisor.Disk{}, false, errdefs.InvalidArgument("disks", fmt.Sprintf(
				"%q is the vm's own disk image, which is attached already (disk %s): the same disk twice", o.Path, StatefulDiskID))
		}
	}
	return hypervisor.Disk{ID: StatefulDiskID, Path: f.path, File: file, Format: format}, true, nil
}

// Adopt holds the image of a VM an earlier cabind started. No operation
// runs yet (Recover ended them), so the hold cannot fail for one; should
// one have started since, the VM runs all the same and the hold is
// counted anyway.
func (r Resource) Adopt(_ context.Context, vm resource.VM, state json.RawMessage) (resource.Hold, error) {
	key := Key{Owner: vm.Owner, Name: vm.Name}
	if r.Store.Busy(key) {
		vm.Log.Warn("adopted a VM whose image is under an operation", "image", key.String())
	}
	release, err := r.Store.hold(key, true)
	if err != nil {
		return nil, err
	}
	h := &hold{release: release}
	if len(state) > 0 {
		if err := json.Unmarshal(state, &h.state); err != nil {
			vm.Log.Warn("diskimage state", "err", err)
		}
	}
	for _, name := range h.state.Others {
		if (Key{Name: name}).Validate() != nil {
			continue
		}
		if rel, err := r.Store.hold(Key{Owner: vm.Owner, Name: name}, true); err == nil {
			h.others = append(h.others, rel)
		}
	}
	return h, nil
}

// holdState is what a VM's record keeps: the disk attached, if any, and
// the owner's other images the start attached.
type holdState struct {
	Disk   string   `json:"disk,omitempty"`
	Path   string   `json:"path,omitempty"`
	Others []string `json:"others,omitempty"`
}

type hold struct {
	release func()
	// others release the owner's other images the VM holds.
	others []func()
	state  holdState

	mu sync.Mutex
	// file is the image while the hypervisor has not taken it.
	file *os.File
}

// StatefulDisk is the ID of the disk the VM's image is attached as, and
// its path; empty when the VM has no image.
func (h *hold) StatefulDisk() (id, path string) { return h.state.Disk, h.state.Path }

func (h *hold) State() json.RawMessage {
	if h.state.Disk == "" && len(h.state.Others) == 0 {
		return nil
	}
	b, _ := json.Marshal(h.state)
	return b
}

// Start lets go of the image's file: the hypervisor has its own.
func (h *hold) Start(context.Context, hypervisor.VM) error {
	h.closeFile()
	return nil
}

func (h *hold) closeFile() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.file != nil {
		h.file.Close()
		h.file = nil
	}
}

func (h *hold) Release(context.Context) error {
	h.closeFile()
	for _, rel := range h.others {
		rel()
	}
	h.release()
	return nil
}
