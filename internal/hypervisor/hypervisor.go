// Package hypervisor is the seam between cabind's VM manager and the program
// that runs VMs. The manager knows only these types; internal/qemu
// implements them.
package hypervisor

import (
	"context"
	"errors"
	"os"
	"syscall"

	"github.com/cabinvm/cabin/internal/statedir"
)

// Accel is the CPU accelerator.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// Machine is the virtual machine model.
type Machine string

const (
	// MachineMicroVM is QEMU's microvm: virtio-mmio, no PCI, fast to boot.
	MachineMicroVM Machine = "microvm"
	// MachineQ35 is a PCI machine, for features microvm lacks (hotplug).
	MachineQ35 Machine = "q35"
)

// Config describes one VM to launch. All fields are checked by the caller;
// Launch checks them again before they reach a command line.
type Config struct {
	// Name is the VM's name, for logs and the process title.
	Name    string
	Dir     statedir.VMDir
	Machine Machine
	Accel   Accel
	CPUs    int
	// MemoryMiB is the guest RAM.
	MemoryMiB int
	// Kernel is the kernel to boot directly (an ELF vmlinux with a PVH note
	// or a bzImage); Initrd the initramfs. The hypervisor opens these
	// paths itself, as root, unless the files below are set.
	Kernel string
	Initrd string
	// KernelFile and InitrdFile, when set, are the kernel and initramfs
	// already open, and the hypervisor reads these files instead of
	// opening Kernel and Initrd, which then only name them. They are for
	// files of a caller's choosing, opened while checking that the caller
	// may read them: a path may lead elsewhere by the time the hypervisor
	// would open it. Launch leaves them open; the hypervisor holds its
	// own descriptors once launched.
	KernelFile *os.File
	InitrdFile *os.File
	// KernelArgs are appended to the kernel command line. Each must be a
	// single word (no whitespace).
	KernelArgs []string
	// Shares are host directories the guest may mount (virtio-9p), each
	// under its own tag.
	Shares []Share
}

// Share is a host directory exported to the guest over virtio-9p. The
// hypervisor opens the directory once, at launch, and serves the guest
// from that open directory for the VM's life: files changed in it are
// seen, while a directory put at Path later is not.
type Share struct {
	// Tag is what the guest mounts (mount -t 9p TAG DIR): 1 to 31 of
	// [A-Za-z0-9_-], unique within a VM.
	Tag string
	// Path is the host directory, absolute and clean.
	Path string
	// ReadOnly refuses every write by the guest.
	ReadOnly bool
}

// VM is a running hypervisor process. It is launched with its vCPUs paused
// so the caller can attach to its console and channel first.
type VM interface {
	// PID is the hypervisor process.
	PID() int
	// StartTime is the process start time (clock ticks after boot, field
	// 22 of /proc/PID/stat); with PID it identifies the process across a
	// daemon restart.
	StartTime() uint64
	// Done is closed once the process has exited.
	Done() <-chan struct{}
	// Resume starts (or resumes) the vCPUs.
	Resume(ctx context.Context) error
	// Quit asks the hypervisor to exit at once, as if the power was cut.
	Quit(ctx context.Context) error
	// Signal sends sig to the process; ESRCH is not an error.
	Signal(sig syscall.Signal) error
	// Close releases the control connection; the VM keeps running.
	Close() error
}

// Launcher starts VMs and re-attaches to running ones.
type Launcher interface {
	// Launch starts a VM, paused, and returns once it is controllable.
	Launch(ctx context.Context, cfg Config) (VM, error)
	// Adopt re-attaches to the VM whose files are in dir, launched earlier
	// by this or an earlier daemon. It fails with ErrNotRunning when that
	// process (identified by its pidfile and startTime) is gone.
	Adopt(ctx context.Context, dir statedir.VMDir, startTime uint64) (VM, error)
}

// ErrNotRunning is returned by Adopt for a VM whose process has exited.
var ErrNotRunning = errors.New("hypervisor process not running")
