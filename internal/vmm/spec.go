package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/names"
)

// Key identifies a VM: names are unique per owner.
type Key struct {
	Owner string
	Name  string
}

// Validate checks both parts of the key (ValidateName, ValidateOwner).
func (k Key) Validate() error {
	if err := ValidateName(k.Name); err != nil {
		return err
	}
	return ValidateOwner(k.Owner)
}

func (k Key) String() string {
	if k.Owner == "" {
		return k.Name
	}
	return k.Owner + "/" + k.Name
}

// Spec is what a caller asks of a new VM.
type Spec struct {
	Key
	CPUs int
	// MemoryMiB is the guest RAM; 0 picks Options.DefaultMemoryMiB.
	MemoryMiB int
	// Kernel and Initrd replace cabin's image when set: absolute paths on
	// this host, readable by Caller.
	Kernel string
	Initrd string
	// KernelParams are extra kernel command line words.
	KernelParams []string
	// Accel overrides the manager's accelerator when set.
	Accel hypervisor.Accel
	// Type is what the caller says the VM is for, kept for reporting.
	Type VMType
	// Timeout bounds the wait for the guest agent; 0 means 60 s.
	Timeout time.Duration
	// Caller is who asked; nil means a trusted caller (the daemon itself).
	Caller *caller.Caller
	// Network is the network asked for: NetworkTap, NetworkUser,
	// NetworkNone, or "" for the daemon's default.
	Network string
	// Hotplug asks for a machine that takes NICs and USB devices while
	// it runs (q35, see hotplug.go), slower to boot than the default
	// microvm.
	Hotplug bool
	// Disks are extra disks, attached after the VM's own image (see
	// Disk); Shares host folders shared with it (see Share).
	Disks  []Disk
	Shares []Share
	// StartTermina runs the guest's StartTermina at bring-up, after the
	// disks are mounted; it runs too for a Termina VM and for one that
	// has its own disk image (its stateful disk).
	StartTermina bool
	// TerminaFeatures are passed on to StartTermina: concierge's
	// TerminaFeature numbers.
	TerminaFeatures []int32
}

// The networks a VM may ask for (Spec.Network).
const (
	// NetworkTap is a tap of its own on the host, with a /30, routed and
	// NATed: the host and the VM reach each other.
	NetworkTap = "tap"
	// NetworkUser is QEMU's user-mode network: outbound TCP and UDP only,
	// no privilege needed.
	NetworkUser = "user"
	// NetworkNone is loopback only.
	NetworkNone = "none"
)

// VMType is what a VM is for, as its client says: cabin only reports it.
// The values are concierge's, in its order, so that records keep them as
// numbers that mean the same.
type VMType int32

const (
	VMTypeUnknown VMType = iota
	VMTypeTermina
	VMTypeARC
	VMTypePlugin
	VMTypeBorealis
	VMTypeBruschetta
	VMTypeBaguette
)

// Limits of a Spec.
const (
	MaxNameLength      = names.MaxVM
	MaxOwnerLength     = 128
	MinMemoryMiB       = hypervisor.MinMemoryMiB
	DefaultStartupWait = 60 * time.Second
	maxKernelParams    = 64
)

// ValidateName checks a VM name against the one rule for names
// (internal/names). It never becomes a path (see statedir.VMID).
func ValidateName(name string) error {
	return names.Check("name", name, MaxNameLength)
}

// ValidateOwner checks an owner id; empty is the default owner. An owner
// id travels in gRPC metadata (cabin-owner) and in logs: printable ASCII
// without spaces or path separators.
func ValidateOwner(owner string) error {
	if len(owner) > MaxOwnerLength {
		return errdefs.InvalidArgument("owner_id", fmt.Sprintf("longer than %d bytes", MaxOwnerLength))
	}
	for i := 0; i < len(owner); i++ {
		switch c := owner[i]; {
		case c <= ' ' || c >= 0x7f:
			return errdefs.InvalidArgument("owner_id", fmt.Sprintf("holds the byte %#02x; only printable ASCII without spaces", c))
		case c == '/' || c == '\\':
			return errdefs.InvalidArgument("owner_id", fmt.Sprintf("must not hold %q", c))
		}
	}
	return nil
}

// Host is what the host offers VMs.
type Host struct {
	CPUs      int
	MemoryMiB int
	// NoKVM says why KVM cannot run guests on this host; empty when it
	// can (or when the operator said it can).
	NoKVM string
}

// bootFiles are a caller's own kernel and initrd, opened on its behalf
// (caller.Caller.Open); a nil file was not asked for.
type bootFiles struct {
	kernel, initrd *os.File
}

// Close closes the files. A hypervisor launched from them holds its own
// descriptors.
func (b bootFiles) Close() {
	for _, f := range []*os.File{b.kernel, b.initrd} {
		if f != nil {
			f.Close()
		}
	}
}

// validate checks s against host and fills in defaults. The kernel and
// initrd paths are checked as openFiles opens them.
func (s *Spec) validate(host Host, defaultMemoryMiB int) error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if err := ValidateOwner(s.Owner); err != nil {
		return err
	}
	if s.CPUs < 1 {
		return errdefs.InvalidArgument("cpus", "must be at least 1")
	}
	if s.CPUs > host.CPUs {
		return errdefs.InvalidArgument("cpus", fmt.Sprintf("%d is more than the host's %d", s.CPUs, host.CPUs))
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = min(defaultMemoryMiB, host.MemoryMiB)
	}
	if s.MemoryMiB < MinMemoryMiB {
		return errdefs.InvalidArgument("memory_mib", fmt.Sprintf("%d MiB is below the minimum of %d MiB", s.MemoryMiB, MinMemoryMiB))
	}
	if s.MemoryMiB > host.MemoryMiB {
		return errdefs.InvalidArgument("memory_mib", fmt.Sprintf("%d MiB is more than the host's %d MiB", s.MemoryMiB, host.MemoryMiB))
	}
	switch s.Accel {
	case "", hypervisor.AccelTCG:
	case hypervisor.AccelKVM:
		if host.NoKVM != "" {
			return fmt.Errorf("accelerator: KVM cannot run guests on this host (%s): %w", host.NoKVM, errdefs.ErrFailedPrecondition)
		}
	default:
		return errdefs.InvalidArgument("accelerator", fmt.Sprintf("unknown accelerator %q", s.Accel))
	}
	if s.Initrd != "" && s.Kernel == "" {
		return errdefs.InvalidArgument("initrd_path", "needs kernel_path too")
	}
	if len(s.KernelParams) > maxKernelParams {
		return errdefs.InvalidArgument("kernel_params", fmt.Sprintf("more than %d parameters", maxKernelParams))
	}
	for i, p := range s.KernelParams {
		if err := checkKernelParam(p); err != nil {
			return errdefs.InvalidArgument(fmt.Sprintf("kernel_params[%d]", i), err.Error())
		}
	}
	switch s.Network {
	case "", NetworkTap, NetworkUser, NetworkNone:
	default:
		return errdefs.InvalidArgument("network", fmt.Sprintf("%q: want tap, user or none", s.Network))
	}
	if err := s.checkDisks(); err != nil {
		return err
	}
	if s.Timeout < 0 {
		return errdefs.InvalidArgument("timeout", "must not be negative")
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultStartupWait
	}
	return nil
}

// openFiles opens the caller's kernel and initrd, if any, on its behalf
// (openHostFile), and sets s.Kernel and s.Initrd to the paths it checked
// rather than the links to them. Close the files once the hypervisor has
// them.
func (s *Spec) openFiles() (bootFiles, error) {
	kernel, kf, err := openHostFile("kernel_path", s.Kernel, s.Caller)
	if err != nil {
		return bootFiles{}, err
	}
	initrd, inf, err := openHostFile("initrd_path", s.Initrd, s.Caller)
	if err != nil {
		bootFiles{kernel: kf}.Close()
		return bootFiles{}, err
	}
	s.Kernel, s.Initrd = kernel, initrd
	return bootFiles{kernel: kf, initrd: inf}, nil
}

// checkKernelParam allows one kernel command line word (see
// hypervisor.CheckKernelArg) that does not take over what cabin controls:
// init, and its own cabin.* parameters.
func checkKernelParam(p string) error {
	if err := hypervisor.CheckKernelArg(p); err != nil {
		return err
	}
	key, _, _ := strings.Cut(p, "=")
	switch {
	case key == "init", key == "rdinit", strings.HasPrefix(key, "cabin."):
		return fmt.Errorf("%q is set by cabin", key)
	}
	// And only the allow-list's words (kparams.go).
	return allowedKernelParam(p)
}

// openHostFile opens a file on this host that a caller asks cabind to
// read for it: the path must be absolute, clean and fit for a hypervisor
// command line (see hypervisor.CheckBootPath; the hypervisor gets the open file, but
// the path is still recorded and logged), and lead to a regular file the caller
// could read itself (caller.Caller.Open; cabind runs as root and could read
// anything). It returns the path with its symlinks resolved, which is
// what was checked and what to record (a link in a directory the caller
// can read may lead into one it cannot), and the open file, which is what
// to hand on: the path may be changed later, the file not. Both are zero
// when path is empty.
//
// Errors name path as the caller wrote it, never where it leads: cabind
// follows links through directories the caller may not search.
func openHostFile(field, path string, c *caller.Caller) (string, *os.File, error) {
	if path == "" {
		return "", nil, nil
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return "", nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not an absolute clean path", path))
	}
	if err := hypervisor.CheckBootPath(path); err != nil {
		return "", nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q %v", path, err))
	}
	// A caller that is not root learns nothing of files it may not read:
	// cabind resolves the path as root, so whether it exists, and why it
	// cannot be opened, is told to the caller in one word for all.
	unreadable := func(err error) error {
		if c.Trusted() {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q: %v", path, err))
		}
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q: no such file, or not one the caller may read", path))
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", nil, unreadable(unwrapPathError(err))
	}
	f, err := c.Open(resolved)
	if errors.Is(err, caller.ErrNotRegular) {
		// Found only once the caller's own permissions led there.
		return "", nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a regular file", path))
	}
	if err != nil {
		return "", nil, unreadable(err)
	}
	// After the caller's checks, so that it learns nothing of a path it
	// may not search.
	if err := hypervisor.CheckBootPath(resolved); err != nil {
		f.Close()
		return "", nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q leads to a path that %v", path, err))
	}
	return resolved, f, nil
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// errNoVM is the one way cabin says a VM is not there: "no VM named X",
// with its owner when it has one.
func errNoVM(key Key) error {
	if key.Owner == "" {
		return errdefs.Errorf(errdefs.ErrNotFound, "no VM named %s", key.Name)
	}
	return errdefs.Errorf(errdefs.ErrNotFound, "no VM named %s (owner %s)", key.Name, key.Owner)
}
