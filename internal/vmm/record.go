package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// record is what is kept of a VM on disk (statedir VMDir.Record) so that a
// restarted cabind can re-adopt it.
type record struct {
	Version    int       `json:"version"`
	Owner      string    `json:"owner"`
	Name       string    `json:"name"`
	CID        int64     `json:"cid"`
	CPUs       int       `json:"cpus"`
	MemoryMiB  int       `json:"memory_mib"`
	Accel      string    `json:"accel"`
	Machine    string    `json:"machine"`
	Kernel     string    `json:"kernel"`
	Initrd     string    `json:"initrd"`
	KernelArgs []string  `json:"kernel_args"`
	VMType     VMType    `json:"vm_type"`
	PID        int       `json:"pid"`
	StartTime  uint64    `json:"start_time"`
	StartedAt  time.Time `json:"started_at"`
	// Alive is set while the hypervisor process should be running.
	Alive bool `json:"alive"`
	// Ready is set once the guest agent has reported in.
	Ready bool `json:"ready"`
	// StartupTimeout is how long the guest may take to report in (the
	// start's timeout); a daemon that adopts the VM before then keeps it.
	StartupTimeout time.Duration `json:"startup_timeout_ns,omitempty"`
	// Shares are the host directories the VM was given. An adopted VM
	// keeps them (its QEMU serves them from the directories it opened),
	// so they must outlive it: see Manager.SharedDirs.
	Shares []recordShare `json:"shares,omitempty"`
	// Resources is what the VM's holds on host resources recorded, by
	// kind (resource.Set.States), for a restarted cabind to take back.
	Resources map[string]json.RawMessage `json:"resources,omitempty"`
	// Network is the network the start asked for (Spec.Network).
	Network string `json:"network,omitempty"`
	// Disks are the VM's block devices, in the guest's order, and what
	// bring-up mounts of them; StartTermina and TerminaFeatures what it
	// asks of Termina (disks.go, bringup.go).
	Disks           []recordDisk `json:"disks,omitempty"`
	StartTermina    bool         `json:"start_termina,omitempty"`
	TerminaFeatures []int32      `json:"termina_features,omitempty"`
	// Hotplug are the devices plugged in while the VM runs, for a
	// restarted cabind to detach and release (hotplug.go).
	Hotplug []hotplugDevice `json:"hotplug,omitempty"`
	// Suspended is set while the VM is suspended (Manager.Suspend); a
	// restarted cabind asks the hypervisor all the same.
	Suspended bool `json:"suspended,omitempty"`
	// StoppedAt, StopReason and StopDetail say how the VM's last run
	// ended, once it has (lastrun.go).
	StoppedAt  time.Time  `json:"stopped_at,omitzero"`
	StopReason StopReason `json:"stop_reason,omitempty"`
	StopDetail string     `json:"stop_detail,omitempty"`
}

// recordShare is a hypervisor.Share as a record keeps it.
type recordShare struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Guest is where bring-up mounts the share in the guest (Mount9P),
	// for a share of the start's (Spec.Shares); empty for cabin's own.
	Guest string `json:"guest,omitempty"`
}

func recordShares(shares []hypervisor.Share) []recordShare {
	var out []recordShare
	for _, s := range shares {
		out = append(out, recordShare{Tag: s.Tag, Path: s.Path, ReadOnly: s.ReadOnly})
	}
	return out
}

// A record written before shares or resources were recorded reads as one
// without them, which is what its VM has: no bump.
const recordVersion = 1

func writeRecord(dir statedir.VMDir, r *record) error {
	r.Version = recordVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir.Path(), ".vm.json.*")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write record: %w", err)
	}
	// Durable before it is renamed into place, and the rename after: a
	// host that loses power then finds the old record or the new one,
	// never an empty file where the record of a running VM was.
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := os.Rename(tmp.Name(), dir.Record()); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if d, err := os.Open(dir.Path()); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func readRecord(dir statedir.VMDir) (*record, error) {
	b, err := os.ReadFile(dir.Record())
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", dir.Record(), err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("%s: record version %d, want %d", dir.Record(), r.Version, recordVersion)
	}
	return &r, nil
}

// SharedDirs lists the host directories shared with VMs whose hypervisor
// may be running: those this manager starts or watches, and those whose
// records say they live (a VM this daemon could not adopt may still run).
// The image builder keeps them (image.Builder.InUse): QEMU serves a
// share from the directory it opened at launch for the VM's whole life.
func (m *Manager) SharedDirs() ([]string, error) {
	var dirs []string
	m.mu.Lock()
	for _, v := range m.vms {
		v.mu.Lock()
		if v.rec != nil {
			for _, s := range v.rec.Shares {
				dirs = append(dirs, s.Path)
			}
		}
		v.mu.Unlock()
	}
	m.mu.Unlock()
	vmDirs, err := vmDirs(m.opts.Root)
	if err != nil {
		return nil, fmt.Errorf("vm records: %w", err)
	}
	for _, dir := range vmDirs {
		rec, err := readRecord(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue // a directory whose first record is being written
		}
		if err != nil {
			// Unreadable: it may describe a running VM, whose shares
			// are then unknown.
			return nil, err
		}
		if rec.Alive {
			for _, s := range rec.Shares {
				dirs = append(dirs, s.Path)
			}
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs), nil
}

// vmDirs lists the VM directories under root.
func vmDirs(root statedir.Root) ([]statedir.VMDir, error) {
	entries, err := os.ReadDir(root.VMsDir())
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []statedir.VMDir
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, root.VM(e.Name()))
		}
	}
	return out, nil
}
