package vmm

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// A VM's last run stays on disk after it stops: its record (how it ran
// and how it ended) and its logs, in its directory, until the VM starts
// again under that name (the directory is the same) or is removed. Stopped
// lists them for cabin's own view; concierge's ListVms keeps upstream's
// semantics and shows running VMs only.

// Stopped returns the VMs of owner that do not run but whose last run is
// on disk, by name, in StateStopped with how they ended.
func (m *Manager) Stopped(owner string) ([]Info, error) {
	dirs, err := vmDirs(m.opts.Root)
	if err != nil {
		return nil, fmt.Errorf("vm records: %w", err)
	}
	var out []Info
	for _, dir := range dirs {
		in, ok := m.lastRun(dir)
		if ok && in.Owner == owner {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// LastRun is the last run of the VM key, when it does not run now.
func (m *Manager) LastRun(key Key) (Info, error) {
	in, ok := m.lastRun(m.opts.Root.VM(statedir.VMID(key.Owner, key.Name)))
	if !ok || in.Key != key {
		return Info{}, errNoVM(key)
	}
	return in, nil
}

// lastRun reads a directory's record as a stopped VM's info: false when
// the VM is known to this manager (it runs, starts or stops), its record
// says it lives, or there is none.
func (m *Manager) lastRun(dir statedir.VMDir) (Info, bool) {
	rec, err := readRecord(dir)
	if err != nil || rec.Alive {
		return Info{}, false
	}
	key := Key{Owner: rec.Owner, Name: rec.Name}
	m.mu.Lock()
	_, known := m.vms[key]
	m.mu.Unlock()
	if known {
		return Info{}, false
	}
	in := Info{
		Key: key, State: StateStopped, CID: rec.CID, CPUs: rec.CPUs, MemoryMiB: rec.MemoryMiB,
		Accel: hypervisor.Accel(rec.Accel), Type: rec.VMType, StartedAt: rec.StartedAt,
		StoppedAt: rec.StoppedAt, StopReason: rec.StopReason, StopDetail: rec.StopDetail,
	}
	in.Disks, in.Shares = rec.diskInfo()
	return in, true
}

// Remove forgets the last run of the VM key: its directory (record and
// logs) goes. A VM that runs, starts or stops is refused.
func (m *Manager) Remove(key Key) error {
	if err := key.Validate(); err != nil {
		return err
	}
	dir := m.opts.Root.VM(statedir.VMID(key.Owner, key.Name))
	// Under the manager's lock: no start of this name can begin meanwhile.
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, known := m.vms[key]; known {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is not stopped: stop it first", key.Name)
	}
	rec, err := readRecord(dir)
	if errors.Is(err, os.ErrNotExist) {
		return errNoVM(key)
	}
	if err != nil {
		return err
	}
	if rec.Alive || rec.Owner != key.Owner || rec.Name != key.Name {
		// Alive: a VM no daemon watches may still run; its record stays
		// for the next cabind to adopt or clear.
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s may still run: its record says so", key.Name)
	}
	if err := os.RemoveAll(dir.Path()); err != nil {
		return fmt.Errorf("remove vm %s: %w", key.Name, err)
	}
	return nil
}

// Prune removes the last runs of every stopped VM of owner, and returns
// their names.
func (m *Manager) Prune(owner string) ([]string, error) {
	stopped, err := m.Stopped(owner)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, in := range stopped {
		if err := m.Remove(in.Key); err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		removed = append(removed, in.Name)
	}
	return removed, errors.Join(errs...)
}
