package vmm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// TerminaName is the VM SetCrostiniType acts on: upstream's default
// Termina VM, the Linux development environment.
const TerminaName = "termina"

// SetCrostiniType sets the type of owner's Termina VM (TerminaName), as
// upstream's SetCrostiniVmType sets its disk's: a later start of it that
// names no type takes this one, and GetVmInfo and ListVms then report it.
// It is kept in the VM's record. Refused while the VM is there (upstream:
// "cannot change vm type" while it runs), and NotFound for an owner whose
// Termina VM never ran here (upstream: it does not exist).
func (m *Manager) SetCrostiniType(owner string, t VMType) error {
	if err := ValidateOwner(owner); err != nil {
		return err
	}
	if t < VMTypeUnknown || t > VMTypeBaguette {
		return errdefs.InvalidArgument("vm_type", fmt.Sprintf("%d is no VM type", t))
	}
	key := Key{Owner: owner, Name: TerminaName}
	// Under the manager's lock no start of the VM can begin, and so
	// none can write its record meanwhile.
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vms[key] != nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is running: its type cannot change until it stops", key)
	}
	dir := m.opts.Root.VM(statedir.VMID(key.Owner, key.Name))
	rec, err := readRecord(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return errdefs.Errorf(errdefs.ErrNotFound, "vm %s has never run here: no Linux development environment to set the type of", key)
	}
	if err != nil {
		return err
	}
	if rec.Alive {
		// A record no daemon adopted: its VM may still run.
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s may still run (its record says so): its type cannot change", key)
	}
	rec.VMType = t
	return writeRecord(dir, rec)
}

// startType is the type a start of spec gives its VM: the one it names,
// else, for the Termina VM, the type its record keeps (SetCrostiniType,
// or its last start's).
func (m *Manager) startType(spec Spec) VMType {
	if spec.Type != VMTypeUnknown || spec.Name != TerminaName {
		return spec.Type
	}
	rec, err := readRecord(m.opts.Root.VM(statedir.VMID(spec.Owner, spec.Name)))
	if err != nil {
		return spec.Type
	}
	return rec.VMType
}

// LaunchAllowed answers GetVmLaunchAllowed from the host as it is now:
// whether a VM of the default size may start. It says no, and why, when
// the manager is closing; when the memory the host has available
// (/proc/meminfo MemAvailable) is less than a default VM's; and when the
// kernel says the CPU leaks through L1TF or MDS to code on its SMT
// sibling (/sys/devices/system/cpu/vulnerabilities: "SMT vulnerable"),
// the check upstream makes before it runs an untrusted VM
// (UntrustedVMUtils::SafeToRunVirtualMachines).
func (m *Manager) LaunchAllowed() (bool, string) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return false, "cabind is stopping"
	}
	meminfo := m.meminfoFile
	if meminfo == "" {
		meminfo = "/proc/meminfo"
	}
	avail, err := memAvailableKiB(meminfo)
	if err != nil {
		return false, fmt.Sprintf("cannot tell how much memory the host has free: %v", err)
	}
	if want := int64(m.opts.DefaultMemoryMiB) << 10; avail < want {
		return false, fmt.Sprintf("the host has %d MiB of memory available, less than a VM's %d MiB", avail>>10, m.opts.DefaultMemoryMiB)
	}
	vuln := m.vulnDir
	if vuln == "" {
		vuln = "/sys/devices/system/cpu/vulnerabilities"
	}
	for _, name := range []string{"l1tf", "mds"} {
		b, err := os.ReadFile(filepath.Join(vuln, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // a kernel or CPU that knows nothing of it
		}
		if err != nil {
			return false, fmt.Sprintf("cannot read the CPU's %s status: %v", name, err)
		}
		if status := strings.TrimSpace(string(b)); strings.Contains(status, "SMT vulnerable") {
			return false, fmt.Sprintf("the CPU is vulnerable to %s with SMT on (%q): disable SMT to run VMs", strings.ToUpper(name), status)
		}
	}
	return true, ""
}

// memAvailableKiB reads MemAvailable from a meminfo file.
func memAvailableKiB(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseMemAvailable(b)
}

// parseMemAvailable finds "MemAvailable: N kB" in meminfo's bytes.
func parseMemAvailable(b []byte) (int64, error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo: MemAvailable line %q", s.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("meminfo: MemAvailable %q", f[0])
		}
		return n, nil
	}
	return 0, errors.New("meminfo: no MemAvailable")
}
