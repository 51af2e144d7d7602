package main

import (
	"strconv"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// Where cabin run has the agent mount things in the guest. The shares are
// mounted once in a VM, whatever number of containers use them (the agent
// counts their users); each container's writable layer and root are in a
// directory of its own.
const (
	// rootfsMount is cabind's share of the root filesystems it builds.
	rootfsMount = "/run/cabin/rootfs"
	// imagesMount is cabind's share of its image store's trees.
	imagesMount = "/run/cabin/images"
	// containersDir holds a tmpfs per container: its overlay's upper
	// and work directories and the overlay, its root.
	containersDir = "/run/cabin/containers"
)

// validContainerID is what the agent and cabin-runtime accept as a
// container id (^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$); checked here too, so
// a bad --name is a usage error that never reaches the VM. Written out, not
// a package-level regexp: compiling the {0,63} repeats took ~1 ms of every
// cabin command's start (decisions §33).
func validContainerID(id string) bool {
	return nameOf(id, func(c byte) bool {
		return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_'
	})
}

// validRootfsName is a directory name in the rootfs share
// (^[a-z0-9][a-z0-9._-]{0,63}$): one path element, no dot-dot, nothing a
// shell or a mount option would read.
func validRootfsName(name string) bool {
	return nameOf(name, func(c byte) bool {
		return 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
	})
}

// nameOf reports whether s is 1-64 bytes, the first one first's, the others
// first's or '_', '.', '-'.
func nameOf(s string, first func(byte) bool) bool {
	if len(s) == 0 || len(s) > 64 || !first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !first(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func checkContainerID(id string) error {
	if !validContainerID(id) {
		return usagef("--name %q is not a container name: use 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-'", id)
	}
	return nil
}

func checkRootfsName(name string) error {
	if !validRootfsName(name) {
		return usagef("--rootfs %q is not a root filesystem name: use lower-case letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// shareStorage is the Kata storage that mounts one of cabind's read-only
// shares in the guest.
func shareStorage(tag, mountPoint string) *kata.Storage {
	return &kata.Storage{
		Driver:     "9p",
		Source:     tag,
		Fstype:     "9p",
		Options:    []string{"trans=virtio", "version=9p2000.L", "ro", "nodev"},
		MountPoint: mountPoint,
	}
}

// rootfsStorage mounts the share of the root filesystems cabind builds.
func rootfsStorage() *kata.Storage { return shareStorage(bootcfg.RootfsTag, rootfsMount) }

// upperSize bounds a container's writable layer: half its memory limit
// when it has one (the tmpfs's pages are the container's memory, so a
// full layer fails writes with ENOSPC before the OOM killer acts), else a
// quarter of the guest's RAM.
func upperSize(memory int64) string {
	if kib := memory / 2 >> 10; kib > 0 {
		return "size=" + strconv.FormatInt(kib, 10) + "k"
	}
	return "size=25%"
}

// containerStorages are what a container of img needs, in mount order:
// the image's share (shared with every container of the VM), a tmpfs of
// the container's own, the overlay's upper and work directories in it,
// and the overlay, the container's root (containerRoot).
func containerStorages(img runImage, id string, memory int64) []*kata.Storage {
	share := rootfsStorage()
	if img.digest != "" {
		share = shareStorage(bootcfg.ImagesTag, imagesMount)
	}
	dir := containersDir + "/" + id
	return []*kata.Storage{
		share,
		{Driver: "ephemeral", Fstype: "tmpfs", Source: "tmpfs", Options: []string{"nodev", "mode=0700", upperSize(memory)}, MountPoint: dir},
		{Driver: "local", Options: []string{"mode=0755"}, MountPoint: dir + "/upper"},
		{Driver: "local", Options: []string{"mode=0700"}, MountPoint: dir + "/work"},
		{Driver: "overlayfs", Fstype: "overlay", Source: "overlay", MountPoint: containerRoot(id),
			Options: []string{"lowerdir=" + img.lowerDir(), "upperdir=" + dir + "/upper", "workdir=" + dir + "/work"}},
	}
}

// containerRoot is the container's root: its overlay.
func containerRoot(id string) string { return containersDir + "/" + id + "/rootfs" }

// defaultCaps are the capabilities a container's process gets: the set
// Docker and runc's example spec give, which leaves out what would let it
// reach past its namespaces (SYS_ADMIN, SYS_MODULE, NET_ADMIN, ...).
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// cpuPeriod is the CFS period --cpus is a quota of, in µs (Docker's).
const cpuPeriod = 100000

// specInput is what a container's spec is made of.
type specInput struct {
	id          string
	proc        processPlan
	term        *kata.Box
	filter      *kata.LinuxSeccomp
	mounts      []*kata.Mount // --mount binds
	memory      int64         // bytes; 0 for the agent's bound
	cpus        float64       // 0 for no quota
	annotations map[string]string
}

// containerSpec is the OCI spec (in Kata's message form) for cabin run:
// the process planned in its own namespaces, on its writable overlay
// root, with fresh /dev, /proc and /sys, every tmpfs of a bounded size,
// the usual paths of /proc masked or read-only, every device but the
// standard ones denied, the seccomp filter given (none when nil), and
// the limits asked for (the agent bounds the rest).
func containerSpec(in specInput) *kata.Spec {
	caps := &kata.LinuxCapabilities{
		Bounding:  defaultCaps,
		Effective: defaultCaps,
		Permitted: defaultCaps,
	}
	nsTypes := []string{"pid", "network", "ipc", "uts", "mount", "cgroup"}
	namespaces := make([]*kata.LinuxNamespace, len(nsTypes))
	for i, t := range nsTypes {
		namespaces[i] = &kata.LinuxNamespace{Type: t}
	}
	resources := &kata.LinuxResources{
		Devices: []*kata.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if in.memory > 0 {
		resources.Memory = &kata.LinuxMemory{Limit: in.memory}
	}
	if in.cpus > 0 {
		resources.CPU = &kata.LinuxCPU{Quota: int64(in.cpus * cpuPeriod), Period: cpuPeriod}
	}
	mounts := []*kata.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
	annotations := map[string]string{}
	for k, v := range in.annotations {
		annotations[k] = v
	}
	return &kata.Spec{
		Version: "1.2.0",
		Process: &kata.Process{
			Terminal:        in.term != nil,
			ConsoleSize:     in.term,
			User:            &kata.User{},
			Args:            in.proc.argv,
			Env:             in.proc.env,
			Cwd:             in.proc.cwd,
			Capabilities:    caps,
			Rlimits:         []*kata.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:        &kata.Root{Path: containerRoot(in.id)},
		Hostname:    in.id,
		Mounts:      append(mounts, in.mounts...),
		Annotations: annotations,
		Linux: &kata.Linux{
			Namespaces: namespaces,
			Resources:  resources,
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
				"/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
			Seccomp: in.filter,
		},
	}
}

// checkCPUs checks --cpus: a positive number of CPUs, at most vcpus when
// the VM's count is known (0: unknown).
func checkCPUs(cpus float64, vcpus int32) error {
	switch {
	case cpus == 0:
		return nil
	case cpus < 0.01 || cpus != cpus:
		return usagef("--cpus %g: want a number of CPUs of at least 0.01", cpus)
	case vcpus > 0 && cpus > float64(vcpus):
		return usagef("--cpus %g: the VM has %d vCPUs", cpus, vcpus)
	case cpus > 1024:
		return usagef("--cpus %g: too many", cpus)
	}
	return nil
}

// minMemory is the least --memory takes, as Docker's (6 MiB): below it a
// container cannot start.
const minMemory = 6 << 20

// parseMemory reads --memory: bytes with an optional K, M, G or T, as
// Docker's -m.
func parseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := parseSize(s)
	if err != nil {
		return 0, usagef("--memory %q: want a size such as 512M or 2G", s)
	}
	if n < minMemory {
		return 0, usagef("--memory %q: at least 6M", s)
	}
	if n > 1<<50 {
		return 0, usagef("--memory %q is too large", s)
	}
	return int64(n), nil
}

// The bounds of --log-max-size: the agent's (internal/guest/kata's
// minLogFileMax, maxLogFileMax).
const (
	minLogMax = 64 << 10
	maxLogMax = 64 << 20
)

// parseLogMax reads --log-max-size: bytes with an optional K, M or G, as
// --memory; 0 when not given.
func parseLogMax(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := parseSize(s)
	if err != nil || n < minLogMax || n > maxLogMax {
		return 0, usagef("--log-max-size %q: want a size from 64K to 64M", s)
	}
	return n, nil
}
