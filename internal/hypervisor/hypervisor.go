// Package hypervisor is the seam between cabind's VM manager and the program
// that runs VMs. The manager knows only these types; internal/qemu
// implements them.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"unicode"

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
	// PIT keeps the i8254 interval timer on a microvm TCG guest that is
	// told its TSC's rate, which the hypervisor leaves it out of
	// otherwise: the guest's clock events come from its local APIC, and
	// an idle guest costs less without it (docs/decisions.md §37). For
	// comparisons; q35 always has one.
	PIT   bool
	Accel Accel
	CPUs  int
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
	// Console, when set, is the unix socket the hypervisor listens on for
	// the guest's serial console (the kernel's console=ttyS0); without
	// one the guest has no serial port.
	Console string
	// Ports are the guest's virtio-serial ports, each a unix socket the
	// hypervisor listens on for the host end.
	Ports []Port
	// NICs are the guest's network interfaces (virtio-net), in order:
	// the first is the guest's eth0.
	NICs []NIC
	// Disks are the guest's block devices (virtio-blk), in order: the
	// guest names the first vda, the next vdb, and so on.
	Disks []Disk
}

// DiskFormat is the format of a disk's image: always said, never probed
// (a raw image could otherwise claim to be a qcow2 naming a host file).
type DiskFormat string

const (
	DiskRaw   DiskFormat = "raw"
	DiskQcow2 DiskFormat = "qcow2"
)

// Disk is a block device of the guest, backed by an image file the
// hypervisor is handed open: a path may lead elsewhere by the time the
// hypervisor would open it, the open file cannot.
type Disk struct {
	// ID names the disk to the hypervisor (its drive, for a resize) and
	// is the serial the guest reads (/sys/block/vdX/serial): 1 to
	// MaxDiskID of [A-Za-z0-9_-], unique within a VM.
	ID string
	// Path is where the image was found, for logs and records only.
	Path string
	// File is the image, open read-write unless ReadOnly (then
	// read-only). Launch leaves it open; the hypervisor holds its own
	// descriptor once launched.
	File *os.File
	// Format is the image's format.
	Format DiskFormat
	// ReadOnly refuses every write by the guest.
	ReadOnly bool
}

// MaxDiskID is the longest disk ID: a virtio-blk serial holds 20 bytes.
const MaxDiskID = 20

// CheckDiskID accepts a disk's ID: 1 to MaxDiskID of [A-Za-z0-9_-]; it is
// an option value and a QMP node name.
func CheckDiskID(id string) error {
	if id == "" || len(id) > MaxDiskID {
		return fmt.Errorf("%q is not 1 to %d characters", id, MaxDiskID)
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return fmt.Errorf("%q: only [A-Za-z0-9_-]", id)
		}
	}
	return nil
}

// GuestDiskName is the name the guest's kernel gives the index'th
// virtio-blk disk (0-based, in Config.Disks order): vda ... vdz, vdaa ...,
// as the kernel's virtio_blk names them.
func GuestDiskName(index int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	suffix := ""
	for n := index; ; n = n/26 - 1 {
		suffix = string(letters[n%26]) + suffix
		if n < 26 {
			break
		}
	}
	return "vd" + suffix
}

// DiskResizer is a VM whose disks can be resized while it runs; the
// guest sees the new size at once.
type DiskResizer interface {
	// ResizeDisk sets the size of the disk id (a Disk.ID) to size bytes,
	// growing or shrinking its image.
	ResizeDisk(ctx context.Context, id string, size int64) error
}

// NIC is a virtio-net interface of the guest.
type NIC struct {
	// MAC is the guest side's address: unicast, locally administered.
	MAC net.HardwareAddr
	// Tap is the host's tap device the interface is on (1 to 15 of
	// [A-Za-z0-9_-]), which must exist; empty for the hypervisor's
	// user-mode network (QEMU's slirp), which needs no privilege.
	Tap string
}

// MaxTapName is the longest name a network interface may have: IFNAMSIZ
// (16) less its terminating NUL.
const MaxTapName = 15

// CheckTapName accepts the name of the tap a NIC is on: 1 to MaxTapName of
// [A-Za-z0-9_-]. The kernel takes longer names cut short, and QEMU takes
// the name as an option value, where a comma would start another option.
func CheckTapName(name string) error {
	if name == "" || len(name) > MaxTapName {
		return fmt.Errorf("%q is not 1 to %d characters", name, MaxTapName)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return fmt.Errorf("%q: only [A-Za-z0-9_-]", name)
		}
	}
	return nil
}

// CheckMAC accepts a NIC's address: six bytes, unicast (the first byte's
// lowest bit clear: a multicast source address is dropped by every peer)
// and locally administered (its second-lowest bit set: it can be no
// vendor's).
func CheckMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%q is not six bytes", mac.String())
	case mac[0]&0x01 != 0:
		return fmt.Errorf("%s is a multicast address", mac)
	case mac[0]&0x02 == 0:
		return fmt.Errorf("%s is not locally administered", mac)
	}
	return nil
}

// UserNetwork is the addressing of the user-mode network (a NIC without a
// Tap): the hypervisor plays the host at Gateway and a DNS forwarder at
// DNS, inside Subnet, and the guest takes Guest.
type UserNetwork struct {
	Subnet       netip.Prefix
	Gateway, DNS netip.Addr
	Guest        netip.Addr
}

// UserNet is the user-mode network every NIC without a tap is on: QEMU's
// slirp defaults (10.0.2.0/24, the host at .2, DNS at .3, the first guest
// at .15), which launchers spell out rather than rely on.
func UserNet() UserNetwork {
	return UserNetwork{
		Subnet:  netip.MustParsePrefix("10.0.2.0/24"),
		Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS:     netip.MustParseAddr("10.0.2.3"),
		Guest:   netip.MustParseAddr("10.0.2.15"),
	}
}

// Port is a virtio-serial port: the guest finds it by Name
// (/dev/virtio-ports/NAME), the host connects to Socket.
type Port struct {
	// Name is 1 to 63 of [A-Za-z0-9._-], starting with a letter or digit,
	// unique within a VM.
	Name string
	// Socket is the host end, an absolute path that fits a unix socket
	// address (statedir.MaxSocketPath).
	Socket string
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
	// File, when set, is the directory already open (O_PATH will do),
	// and the hypervisor serves it rather than whatever Path leads to
	// by launch: for a folder of a caller's choosing, checked as it was
	// opened. Launch leaves it open.
	File *os.File
	// ReadOnly refuses every write by the guest.
	ReadOnly bool
}

// VM is a running hypervisor process. It is launched with its vCPUs paused
// so the caller can attach to its console and channel first.
//
// The process and its control connection are apart: an adopted VM is its
// process, found and watched, before its control connection answers (if it
// ever does: a stopped or wedged QEMU, a monitor another client holds). It
// can be signalled and its exit seen either way.
type VM interface {
	// PID is the hypervisor process.
	PID() int
	// StartTime is the process start time (clock ticks after boot, field
	// 22 of /proc/PID/stat); with PID it identifies the process across a
	// daemon restart.
	StartTime() uint64
	// Done is closed once the process has exited.
	Done() <-chan struct{}
	// Connect makes the control connection, unless it is made already
	// (Launch returns a VM connected). It may be tried again after it
	// failed.
	Connect(ctx context.Context) error
	// Resume starts (or resumes) the vCPUs. It fails with ErrNotConnected
	// without a control connection, as Quit does.
	Resume(ctx context.Context) error
	// Pause stops the vCPUs (a suspend); the process, its devices and
	// the guest's memory stay as they are until Resume. Pausing a paused
	// VM changes nothing. It fails with ErrNotConnected as Resume does.
	Pause(ctx context.Context) error
	// Paused tells whether the vCPUs are stopped, as the hypervisor
	// itself says (a restarted daemon asks it: its VMs may have been
	// left paused).
	Paused(ctx context.Context) (bool, error)
	// Quit asks the hypervisor to exit at once, as if the power was cut.
	Quit(ctx context.Context) error
	// Signal sends sig to the process; ESRCH is not an error.
	Signal(sig syscall.Signal) error
	// Close releases the control connection; the VM keeps running.
	Close() error
}

// Claim is a launch's hold on a VM directory: while it is held, no
// hypervisor lives there, and none but the one Launch starts may. Launch
// hands the claim on to the hypervisor, which holds it for its whole life,
// however unresponsive it gets; Release lets go of the launcher's own
// hold, after Launch or instead of it.
type Claim interface {
	Release()
}

// Launcher starts VMs and re-attaches to running ones.
type Launcher interface {
	// Claim takes dir, which must exist, for a launch. It fails with
	// ErrInUse while a hypervisor an earlier launch started there may
	// still live: then nothing may write or remove the directory's files.
	Claim(dir statedir.VMDir) (Claim, error)
	// Launch starts a VM in the directory claim holds, paused, and
	// returns once it is controllable.
	Launch(ctx context.Context, claim Claim, cfg Config) (VM, error)
	// Adopt finds again the VM whose files are in dir, launched earlier
	// by this or an earlier daemon, without connecting to it (see
	// VM.Connect). It fails with ErrNotRunning when that process
	// (identified by its pidfile and startTime) is gone.
	Adopt(ctx context.Context, dir statedir.VMDir, startTime uint64) (VM, error)
}

var (
	// ErrNotRunning is returned by Adopt for a VM whose process has
	// exited.
	ErrNotRunning = errors.New("hypervisor process not running")
	// ErrInUse is returned by Claim for a directory a hypervisor may
	// still live in.
	ErrInUse = errors.New("a hypervisor still runs in the VM's directory")
	// ErrNotConnected is returned by the calls that need the control
	// connection while there is none.
	ErrNotConnected = errors.New("hypervisor's control connection not made")
)

// MinMemoryMiB is the least guest RAM a VM may have: below it the guest
// kernel and agent do not come up.
const MinMemoryMiB = 64

// MaxKernelArg is the longest single kernel command line word a caller may
// add; the whole line is bounded by the hypervisor (COMMAND_LINE_SIZE).
const MaxKernelArg = 256

// CheckBootPath accepts a kernel or initrd path as a hypervisor takes it.
// QEMU takes -kernel and -initrd verbatim, with no ",," escape, and splits
// -initrd on commas into a multiboot module list, a space starting a
// module's arguments: "/home/u/a,/etc/shadow" would have QEMU, running as
// root, load /etc/shadow into the guest. Control characters have no
// business in such a path either. Callers check a path a client gave before
// they act on it, and launchers again before the hypervisor sees it.
func CheckBootPath(p string) error {
	if !filepath.IsAbs(p) {
		return errors.New("is not an absolute path")
	}
	for _, r := range p {
		switch {
		case r == ',':
			return errors.New("holds a comma")
		case unicode.IsSpace(r):
			return fmt.Errorf("holds the whitespace character %U", r)
		case unicode.IsControl(r):
			return fmt.Errorf("holds the control character %U", r)
		}
	}
	return nil
}

// CheckKernelArg accepts one word of a guest kernel command line: 1 to
// MaxKernelArg bytes of printable ASCII without spaces, quotes or
// backslashes. The kernel honours quotes, so a quote could join words, and
// a backslash escapes them. What a word may set is the caller's policy;
// this is only its form.
func CheckKernelArg(a string) error {
	if a == "" || len(a) > MaxKernelArg {
		return fmt.Errorf("must be 1 to %d bytes", MaxKernelArg)
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' {
			return fmt.Errorf("%q: only printable ASCII without spaces, quotes or backslashes", a)
		}
	}
	return nil
}
