package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// DefaultKernelArgs start every guest kernel command line; Config.KernelArgs
// follow them (after tsc_early_khz= for TCG guests, see Config.TSCKHz), so
// a later word overrides an earlier one (loglevel=7).
//
//   - console=ttyS0 puts the kernel log on the serial port the daemon logs.
//   - quiet loglevel=0 keep the boot from printing over a slow serial port.
//   - panic=-1 reboots at once on a panic, and -no-reboot turns that into
//     QEMU's exit, so a dead guest is a dead process.
//   - i8042.* skip probing a keyboard controller the guest does not need.
//   - cryptomgr.notests skips the crypto self-tests.
//   - tsc=reliable no_timer_check skip clocksource checks that are slow and
//     flaky under TCG.
//   - initcall_blacklist=tracer_init_tracefs skips filling the tracing
//     file system (thousands of event files nobody in a guest reads): 7 %
//     of the guest's work to /init (docs/decisions.md §30). A kernel
//     without that initcall ignores the name.
var DefaultKernelArgs = []string{
	"console=ttyS0",
	"quiet",
	"loglevel=0",
	"panic=-1",
	"i8042.noaux",
	"i8042.nokbd",
	"i8042.nomux",
	"cryptomgr.notests",
	"tsc=reliable",
	"no_timer_check",
	"initcall_blacklist=tracer_init_tracefs",
}

// maxKernelCmdline is COMMAND_LINE_SIZE on x86 less its NUL: the kernel
// silently truncates a longer command line.
const maxKernelCmdline = 2047

// Config is what Cmdline needs to build QEMU's arguments. File paths come
// from Dir (statedir.VMDir); QEMU-only settings belong here rather than in
// hypervisor.Config. Of the open files (KernelFile, InitrdFile), Cmdline
// uses only whether they are set.
type Config struct {
	hypervisor.Config
	// TSCKHz, when positive, tells a TCG guest its TSC frequency
	// (tsc_early_khz=) so it need not calibrate; see HostTSCKHz for why.
	// KVM guests learn it from KVM, and ignore it.
	TSCKHz int
	// VhostNet moves the data path of KVM guests' tap NICs into the
	// host kernel (vhost-net): set it where /dev/vhost-net exists (see
	// HaveVhostNet). TCG guests ignore it: vhost needs KVM's ioeventfds.
	VhostNet bool
}

// safeWord matches names that may appear unescaped in a QEMU option value
// and in a process title.
var safeWord = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// TCGCPU is the CPU model under TCG: x86-64-v2 (qemu64 plus SSSE3,
// SSE4.1/4.2 and POPCNT), so programs built for v2 still run. Not "max":
// TCG emulates what max adds (AVX, SMAP/SMEP, PCID, ...) slowly, and guest
// code that uses it pays. Measured here (QEMU 7.2, cabin-bench): with max a
// raw 64-byte echo took 238 µs and GetKernelVersion 1.14 ms; with this
// model 125 µs and 659 µs, and boot to the agent 1.8 s instead of 2.1 s.
//
// +arat (an APIC timer that keeps running in deep C-states, which TCG
// emulates) lets the guest kernel run its local APIC timer one-shot and
// go tickless when idle: without it the timer ticks 250 times a second
// forever. Measured here on an idle guest: ~258 timer interrupts a second
// without, ~8 with (docs/decisions.md §24).
const TCGCPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+arat"

// TCGCodeCacheMiB caps TCG's translated-code cache (-accel tcg,tb-size).
// QEMU's default is 1 GiB, filled as the guest runs new code and never
// given back: an idle VM held ~50 MiB of it after boot and ~94 MiB after
// a boot, three container runs and an exec loop (docs/decisions.md §29).
// A full cache is flushed and its code translated again: at 16 MiB that
// thrashed (container runs several times slower), at 32 it flushed 11
// times in that workload, at 64 once.
const TCGCodeCacheMiB = 64

// Cmdline returns QEMU's arguments (without the program name) for cfg. It
// is pure: it neither reads nor writes any file. The VM starts paused (-S)
// and QEMU daemonizes once its sockets are listening.
func Cmdline(cfg Config) ([]string, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	dir := cfg.Dir
	title := processTitle(cfg.Config)
	files, kernel, initrd := bootFiles(cfg.Config)
	kernelArgs := append([]string(nil), DefaultKernelArgs...)
	if cfg.Accel == hypervisor.AccelTCG && cfg.TSCKHz > 0 {
		kernelArgs = append(kernelArgs, "tsc_early_khz="+strconv.Itoa(cfg.TSCKHz))
	}
	kernelCmdline := strings.Join(append(kernelArgs, cfg.KernelArgs...), " ")
	if n := len(kernelCmdline); n > maxKernelCmdline {
		return nil, errdefs.InvalidArgument("kernel_args",
			fmt.Sprintf("kernel command line is %d bytes, longer than %d", n, maxKernelCmdline))
	}

	args := []string{
		// -D keeps QEMU's stderr in the log after it daemonizes (without it
		// QEMU points stderr at /dev/null), and receives startup errors.
		// Like -kernel, -initrd and -pidfile, it takes its argument
		// verbatim: no comma escaping. -initrd also splits on commas (and
		// spaces), so validate refuses those in -kernel and -initrd paths.
		"-D", dir.QEMULog(),
		"-name", title + ",process=" + title,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-S", "-daemonize", "-pidfile", dir.PIDFile(),
	}

	switch cfg.Machine {
	case hypervisor.MachineMicroVM:
		// The guest finds the virtio-mmio devices through ACPI: with
		// acpi=off the agent's port never appears. The ISA serial port
		// is the console. Both are defaults, spelled out because the
		// guest depends on them.
		machine := "microvm,acpi=on,isa-serial=on"
		if withoutPIT(cfg) {
			machine += ",pit=off"
		}
		args = append(args, "-M", machine)
	case hypervisor.MachineQ35:
		args = append(args, "-M", q35Machine)
	}

	switch cfg.Accel {
	case hypervisor.AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case hypervisor.AccelTCG:
		accel := "tcg,tb-size=" + strconv.Itoa(TCGCodeCacheMiB)
		if cfg.CPUs > 1 {
			// One host thread per vCPU; without it TCG runs all
			// vCPUs round-robin on one thread.
			accel += ",thread=multi"
		}
		args = append(args, "-accel", accel, "-cpu", TCGCPU)
	}

	args = append(args,
		"-m", strconv.Itoa(cfg.MemoryMiB),
		"-smp", strconv.Itoa(cfg.CPUs),
		"-chardev", socketChardev("qmp", dir.QMPSocket()),
		"-mon", "chardev=qmp,mode=control",
	)
	if cfg.Console != "" {
		// With no client connected QEMU drops console output: the daemon
		// connects and keeps the log.
		args = append(args,
			"-chardev", socketChardev("console", cfg.Console),
			"-serial", "chardev:console",
		)
	}
	args = append(args, portArgs(cfg.Machine, cfg.Ports)...)
	args = append(args, shareArgs(cfg.Machine, cfg.Shares, firstExtraFD+kernelFiles(cfg.Config))...)
	args = append(args, nicArgs(cfg)...)
	args = append(args, balloonArgs(cfg.Machine)...)
	// The disks' files are the last of bootFiles.
	args = append(args, diskArgs(cfg.Machine, cfg.Disks, firstExtraFD+len(files)-len(cfg.Disks))...)
	if cfg.Machine == hypervisor.MachineQ35 {
		args = append(args, q35Args()...)
	}
	args = append(args, "-kernel", kernel)
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	args = append(args, "-append", kernelCmdline)
	return args, nil
}

// withoutPIT says whether cfg's microvm leaves out the i8254 PIT: under
// TCG, when the guest is told its TSC's rate (tsc_early_khz=), unless
// cfg.PIT keeps it. The PIT is what a kernel calibrates its TSC against
// when it knows no rate (microvm has no HPET nor ACPI PM timer), so it
// stays where the rate is not given, and under KVM, which this host
// cannot measure. Without it an idle TCG guest costs QEMU about half the
// CPU: QEMU emulates the timer even though the guest's clock events come
// from its local APIC (docs/decisions.md §37).
func withoutPIT(cfg Config) bool {
	return cfg.Accel == hypervisor.AccelTCG && cfg.TSCKHz > 0 && !cfg.PIT
}

// firstExtraFD is the descriptor of exec.Cmd.ExtraFiles[0] in QEMU:
// 0, 1 and 2 are its stdin, stdout and stderr.
const firstExtraFD = 3

// bootFiles returns the open files cfg hands QEMU, in the order Launch
// passes them (exec.Cmd.ExtraFiles), and what to give -kernel and -initrd
// (empty for none): /proc/self/fd/N for a file passed open, else the path.
//
// Opening /proc/self/fd/N reopens the very file descriptor N refers to,
// with an offset of its own, however its path changed since; QEMU opens
// -kernel and -initrd itself (open, fopen), so this is how it reads an
// open file. /proc/self/fd rather than /dev/fd: the link /dev/fd is not on
// every host. Verified with QEMU 7.2 (microvm, PVH vmlinux and initramfs,
// daemonized, files unlinked before the launch).
func bootFiles(cfg hypervisor.Config) (files []*os.File, kernel, initrd string) {
	kernel, initrd = cfg.Kernel, cfg.Initrd
	if cfg.KernelFile != nil {
		kernel = "/proc/self/fd/" + strconv.Itoa(firstExtraFD+len(files))
		files = append(files, cfg.KernelFile)
	}
	if cfg.InitrdFile != nil {
		initrd = "/proc/self/fd/" + strconv.Itoa(firstExtraFD+len(files))
		files = append(files, cfg.InitrdFile)
	}
	// Then the shares' open folders (shareArgs numbers them) and the
	// disks' images (diskArgs numbers them), in order.
	for _, s := range cfg.Shares {
		if s.File != nil {
			files = append(files, s.File)
		}
	}
	for _, d := range cfg.Disks {
		files = append(files, d.File)
	}
	return files, kernel, initrd
}

// portArgs gives the guest one virtio-serial controller holding the
// ports, each a chardev of its own named after the port (QEMU ids may hold
// what port names do), none when there are no ports.
func portArgs(machine hypervisor.Machine, ports []hypervisor.Port) []string {
	if len(ports) == 0 {
		return nil
	}
	dev := "virtio-serial-device" // on virtio-mmio
	if machine == hypervisor.MachineQ35 {
		dev = "virtio-serial-pci"
	}
	args := []string{"-device", dev + ",id=vser0"}
	for _, p := range ports {
		id := portChardevID(p.Name)
		args = append(args,
			"-chardev", socketChardev(id, p.Socket),
			"-device", "virtserialport,bus=vser0.0,chardev="+id+",name="+p.Name)
	}
	return args
}

// portChardevID is the chardev id of a port: the part of its name after
// the last dot ("cabin.agent" is "agent"), which keeps the ids cabin's
// command lines have always had.
func portChardevID(name string) string {
	return name[strings.LastIndexByte(name, '.')+1:]
}

// shareArgs exports each share as a virtio-9p device, on the machine's
// bus, backed by an fsdev of its own ("fs0", "fs1", ... in order).
//
// A read-only share is security_model=none: QEMU serves the files with
// the host's owners and modes, and readonly=on makes it refuse every
// change, whatever the guest mounts. A writable share is
// security_model=mapped-xattr: QEMU (root) creates what the guest makes
// as plain files and directories of its own, mode 0600/0700, and keeps
// the guest's owner, mode, device numbers and symlink targets in
// user.virtfs.* xattrs. With none or passthrough the guest's root would
// make real setuid-root programs, device nodes and symlinks in a host
// directory a user owns; mapped, nothing the guest writes is more than a
// private file of root's on the host. The price: files the guest creates
// are root's on the host, and the host's filesystem must take user
// xattrs.
//
// multidevs is left at its default (warn): QEMU numbers a file by its
// host inode, which is unique as long as the export is on one file
// system, and cabin's shares are directories it writes itself, with
// nothing mounted below them. remap would renumber every file the guest
// sees, a hash lookup per file, for a case that does not arise; were it
// to arise, QEMU's log would say so.
func shareArgs(machine hypervisor.Machine, shares []hypervisor.Share, firstFD int) []string {
	dev := "virtio-9p-device" // on virtio-mmio
	if machine == hypervisor.MachineQ35 {
		dev = "virtio-9p-pci"
	}
	var args []string
	fd := firstFD
	for i, s := range shares {
		id := "fs" + strconv.Itoa(i)
		path := escapeOption(s.Path)
		if s.File != nil {
			// QEMU opens the export's root once, at launch, and
			// works below it with openat and O_NOFOLLOW; opening
			// /proc/self/fd/N opens the directory passed.
			path = "/proc/self/fd/" + strconv.Itoa(fd)
			fd++
		}
		fsdev := "local,id=" + id + ",path=" + path
		if s.ReadOnly {
			fsdev += ",security_model=none,readonly=on"
		} else {
			fsdev += ",security_model=mapped-xattr"
		}
		args = append(args,
			"-fsdev", fsdev,
			"-device", dev+",fsdev="+id+",mount_tag="+s.Tag)
	}
	return args
}

// nicArgs gives the guest a virtio-net device per NIC, in order (the
// first is its eth0), on the machine's bus, each backed by a netdev of its
// own ("net0", "net1", ...).
//
// A tap NIC is on the host's tap of that name, which must exist: QEMU
// attaches to it and never creates or configures it (script=no,
// downscript=no), so running QEMU needs no more privilege than opening
// /dev/net/tun for a tap its owner may use. A NIC without a tap is on the
// user-mode network (slirp), its addresses spelled out as
// hypervisor.UserNet has them.
func nicArgs(cfg Config) []string {
	dev := "virtio-net-device" // on virtio-mmio
	if cfg.Machine == hypervisor.MachineQ35 {
		dev = "virtio-net-pci"
	}
	vhost := "off"
	if cfg.VhostNet && cfg.Accel == hypervisor.AccelKVM {
		vhost = "on"
	}
	var args []string
	for i, n := range cfg.NICs {
		id := "net" + strconv.Itoa(i)
		var netdev string
		if n.Tap != "" {
			netdev = "tap,id=" + id + ",ifname=" + n.Tap + ",script=no,downscript=no,vhost=" + vhost
		} else {
			u := hypervisor.UserNet()
			netdev = "user,id=" + id + ",net=" + u.Subnet.String() + ",host=" + u.Gateway.String() +
				",dns=" + u.DNS.String() + ",dhcpstart=" + u.Guest.String()
		}
		args = append(args,
			"-netdev", netdev,
			"-device", dev+",netdev="+id+",mac="+n.MAC.String())
	}
	return args
}

// HaveVhostNet tells whether the host has vhost-net (/dev/vhost-net, a
// character device), which KVM guests' tap NICs then use (Config.VhostNet).
func HaveVhostNet() bool {
	fi, err := os.Stat("/dev/vhost-net")
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// socketChardev is a listening unix socket chardev that does not wait for
// a client before the VM runs.
func socketChardev(id, path string) string {
	return "socket,id=" + id + ",path=" + escapeOption(path) + ",server=on,wait=off"
}

// escapeOption makes s a literal value inside a QEMU key=value option
// string, where a comma separates options and ",," is a literal comma.
func escapeOption(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}

// processTitle names the QEMU process (and the guest, for QEMU): the VM's
// name when it is a safe word, else the base name of its directory, which
// statedir makes a hash.
func processTitle(cfg hypervisor.Config) string {
	if safeWord.MatchString(cfg.Name) {
		return "cabin-" + cfg.Name
	}
	return "cabin-" + filepath.Base(cfg.Dir.Path())
}

func validate(cfg Config) error {
	dir := cfg.Dir.Path()
	if dir == "" || !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return errdefs.InvalidArgument("dir", fmt.Sprintf("%q is not an absolute clean path", dir))
	}
	if !safeWord.MatchString(filepath.Base(dir)) {
		return errdefs.InvalidArgument("dir", fmt.Sprintf("base name of %q is not a safe word", dir))
	}
	for _, p := range cfg.Dir.Sockets() {
		if len(p) > statedir.MaxSocketPath {
			return errdefs.InvalidArgument("dir", fmt.Sprintf("socket path %q longer than %d bytes", p, statedir.MaxSocketPath))
		}
	}
	switch cfg.Machine {
	case hypervisor.MachineMicroVM, hypervisor.MachineQ35:
	default:
		return errdefs.InvalidArgument("machine", fmt.Sprintf("unknown machine %q", cfg.Machine))
	}
	switch cfg.Accel {
	case hypervisor.AccelKVM, hypervisor.AccelTCG:
	default:
		return errdefs.InvalidArgument("accel", fmt.Sprintf("unknown accelerator %q", cfg.Accel))
	}
	if cfg.CPUs < 1 {
		return errdefs.InvalidArgument("cpus", fmt.Sprintf("%d, want at least 1", cfg.CPUs))
	}
	if cfg.MemoryMiB < hypervisor.MinMemoryMiB {
		return errdefs.InvalidArgument("memory_mib", fmt.Sprintf("%d, want at least %d", cfg.MemoryMiB, hypervisor.MinMemoryMiB))
	}
	// QEMU resolves a relative path against the daemon's working
	// directory, which means nothing to the caller. A file passed open
	// reaches QEMU as /proc/self/fd/N, not by its path.
	if cfg.KernelFile == nil {
		if cfg.Kernel == "" {
			return errdefs.InvalidArgument("kernel", "must not be empty")
		}
		if err := hypervisor.CheckBootPath(cfg.Kernel); err != nil {
			return errdefs.InvalidArgument("kernel", fmt.Sprintf("%q: %s", cfg.Kernel, err))
		}
	}
	if cfg.InitrdFile == nil && cfg.Initrd != "" {
		if err := hypervisor.CheckBootPath(cfg.Initrd); err != nil {
			return errdefs.InvalidArgument("initrd", fmt.Sprintf("%q: %s", cfg.Initrd, err))
		}
	}
	if cfg.TSCKHz < 0 {
		return errdefs.InvalidArgument("tsc_khz", fmt.Sprintf("%d, want 0 (unknown) or more", cfg.TSCKHz))
	}
	for i, a := range cfg.KernelArgs {
		if err := hypervisor.CheckKernelArg(a); err != nil {
			return errdefs.InvalidArgument(fmt.Sprintf("kernel_args[%d]", i), fmt.Sprintf("%q: %s", a, err))
		}
	}
	if err := checkPorts(cfg); err != nil {
		return err
	}
	if err := checkNICs(cfg.NICs); err != nil {
		return err
	}
	if err := checkDisks(cfg.Disks); err != nil {
		return err
	}
	tags := map[string]bool{}
	for i, s := range cfg.Shares {
		field := fmt.Sprintf("shares[%d]", i)
		if !shareTag.MatchString(s.Tag) {
			return errdefs.InvalidArgument(field+".tag", fmt.Sprintf("%q is not 1 to %d of [A-Za-z0-9_-]", s.Tag, maxShareTag))
		}
		if tags[s.Tag] {
			return errdefs.InvalidArgument(field+".tag", fmt.Sprintf("%q is already the tag of another share", s.Tag))
		}
		tags[s.Tag] = true
		if err := checkSharePath(s.Path); err != nil {
			return errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q: %s", s.Path, err))
		}
	}
	return nil
}

// maxShareTag is the longest 9p mount tag QEMU takes (verified with QEMU
// 7.2: "mount tag ... (32 bytes) is longer than maximum (31 bytes)").
const maxShareTag = 31

// shareTag is what a share's mount tag may be: it reaches QEMU as an
// option value unescaped, and the guest mounts it by name. QEMU would let
// two devices have one tag, and the guest would mount whichever it found
// first, so validate also refuses duplicates.
var shareTag = regexp.MustCompile(`^[A-Za-z0-9_-]{1,` + strconv.Itoa(maxShareTag) + `}$`)

// checkSharePath accepts a share's directory. It reaches QEMU inside
// -fsdev's key=value list, escaped (escapeOption: a comma is doubled,
// which QEMU 7.2 reads back as one; verified). QEMU resolves a relative
// path against its working directory, which means nothing to the caller,
// and "." or ".." elements make the path say something other than what
// was checked. Control characters have no business in it and would garble
// the logs it appears in.
func checkSharePath(p string) error {
	switch {
	case p == "":
		return errors.New("empty")
	case !filepath.IsAbs(p):
		return errors.New("not an absolute path")
	case filepath.Clean(p) != p:
		return errors.New("not a clean path")
	case !utf8.ValidString(p):
		return errors.New("not valid UTF-8")
	}
	for _, r := range p {
		if unicode.IsControl(r) {
			return errors.New("contains a control character")
		}
	}
	return nil
}

// portName is what a virtio-serial port's name may be: it reaches QEMU
// unescaped as an option value, and the last dot-separated part of it as a
// chardev id.
var portName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*$`)

// checkPorts accepts the console socket and the serial ports: names of the
// allowed form, unique, whose chardev ids do not collide with each other or
// with QEMU's own ("qmp", "console"); sockets at absolute clean paths that
// fit a socket address.
func checkPorts(cfg Config) error {
	if cfg.Console != "" {
		if err := checkSocketPath(cfg.Console); err != nil {
			return errdefs.InvalidArgument("console", fmt.Sprintf("%q: %s", cfg.Console, err))
		}
	}
	ids := map[string]bool{"qmp": true, "console": true}
	for i, p := range cfg.Ports {
		field := fmt.Sprintf("ports[%d]", i)
		if len(p.Name) > 63 || !portName.MatchString(p.Name) {
			return errdefs.InvalidArgument(field+".name", fmt.Sprintf("%q is not 1 to 63 of [A-Za-z0-9._-] in dot-separated words", p.Name))
		}
		if id := portChardevID(p.Name); ids[id] {
			return errdefs.InvalidArgument(field+".name", fmt.Sprintf("%q: its last word %q is already taken", p.Name, id))
		} else {
			ids[id] = true
		}
		if err := checkSocketPath(p.Socket); err != nil {
			return errdefs.InvalidArgument(field+".socket", fmt.Sprintf("%q: %s", p.Socket, err))
		}
	}
	return nil
}

// checkNICs accepts the NICs: each MAC unicast and locally administered,
// each tap's name of the form the kernel and QEMU take; no MAC twice (the
// guest could not tell the interfaces apart) and no tap twice (a tap
// without multiqueue takes one user, and QEMU would fail on the second).
func checkNICs(nics []hypervisor.NIC) error {
	macs, taps := map[string]bool{}, map[string]bool{}
	for i, n := range nics {
		field := fmt.Sprintf("nics[%d]", i)
		if err := hypervisor.CheckMAC(n.MAC); err != nil {
			return errdefs.InvalidArgument(field+".mac", err.Error())
		}
		if macs[n.MAC.String()] {
			return errdefs.InvalidArgument(field+".mac", fmt.Sprintf("%s is already another NIC's", n.MAC))
		}
		macs[n.MAC.String()] = true
		if n.Tap == "" {
			continue
		}
		if err := hypervisor.CheckTapName(n.Tap); err != nil {
			return errdefs.InvalidArgument(field+".tap", err.Error())
		}
		if taps[n.Tap] {
			return errdefs.InvalidArgument(field+".tap", fmt.Sprintf("%q is already another NIC's", n.Tap))
		}
		taps[n.Tap] = true
	}
	return nil
}

// checkSocketPath accepts the path of a socket QEMU listens on: it goes
// into a chardev option, escaped (escapeOption), and must fit sun_path.
func checkSocketPath(p string) error {
	if err := checkSharePath(p); err != nil {
		return err
	}
	if len(p) > statedir.MaxSocketPath {
		return fmt.Errorf("longer than %d bytes", statedir.MaxSocketPath)
	}
	return nil
}
