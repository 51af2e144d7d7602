package main

import (
	"cmp"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// rootfsMount is where cabin run has the agent mount cabind's share of
// container root filesystems in the guest. Every container cabin runs in a
// VM uses the one mount, which the agent keeps while any of them needs it.
const rootfsMount = "/run/cabin/rootfs"

// containerIDPattern is what the agent and cabin-runtime accept as a
// container id; checked here too, so a bad --name is a usage error that
// never reaches the VM.
var containerIDPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// rootfsNamePattern is a directory name in the rootfs share: one path
// element, no dot-dot, nothing a shell or a mount option would read.
var rootfsNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

func checkContainerID(id string) error {
	if !containerIDPattern.MatchString(id) {
		return usagef("--name %q is not a container name: use 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-'", id)
	}
	return nil
}

func checkRootfsName(name string) error {
	if !rootfsNamePattern.MatchString(name) {
		return usagef("--rootfs %q is not a root filesystem name: use lower-case letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// rootfsStorage is the Kata storage that mounts cabind's rootfs share in
// the guest, read-only: the containers' roots are cabind's image cache.
func rootfsStorage() *kata.Storage {
	return &kata.Storage{
		Driver:     "9p",
		Source:     bootcfg.RootfsTag,
		Fstype:     "9p",
		Options:    []string{"trans=virtio", "version=9p2000.L", "ro", "nodev"},
		MountPoint: rootfsMount,
	}
}

// defaultCaps are the capabilities a container's process gets: the set
// Docker and runc's example spec give, which leaves out what would let it
// reach past its namespaces (SYS_ADMIN, SYS_MODULE, NET_ADMIN, ...).
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// tmpSize bounds the container's /tmp: a quarter of the guest's RAM, as
// tmpfs reads a percentage. A tmpfs without a size may fill half of RAM,
// and every container has one; the agent would give it half the
// container's memory limit, which cabin run does not know. Its pages count
// in the container's memory, so a full /tmp fails writes with ENOSPC
// before the container's processes are killed for memory.
const tmpSize = "size=25%"

// containerSpec is the OCI spec (in Kata's message form) for cabin run:
// argv as root in its own namespaces, on the read-only rootfs named, with
// fresh /dev, /proc, /sys and a tmpfs /tmp, every tmpfs of a bounded size,
// the usual paths of /proc masked or read-only, every device but the
// standard ones denied, and the seccomp filter given (none when nil). It
// sets no limits of its own: the agent gives the container its bounds.
func containerSpec(id, rootfs string, argv []string, term *kata.Box, filter *kata.LinuxSeccomp, p process) *kata.Spec {
	defaults := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
	if term != nil {
		defaults["TERM"] = "xterm"
	}
	maps.Copy(defaults, p.env)
	env := make([]string, 0, len(defaults))
	for _, k := range slices.Sorted(maps.Keys(defaults)) {
		env = append(env, k+"="+defaults[k])
	}
	cwd := cmp.Or(p.cwd, "/")
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
	return &kata.Spec{
		Version: "1.2.0",
		Process: &kata.Process{
			Terminal:        term != nil,
			ConsoleSize:     term,
			User:            &kata.User{UID: p.uid, GID: p.gid},
			Args:            argv,
			Env:             env,
			Cwd:             cwd,
			Capabilities:    caps,
			Rlimits:         []*kata.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &kata.Root{Path: rootfsMount + "/" + rootfs, Readonly: true},
		Hostname: id,
		Mounts: []*kata.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", tmpSize}},
		},
		Linux: &kata.Linux{
			Namespaces: namespaces,
			Resources: &kata.LinuxResources{
				Devices: []*kata.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
				"/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
			Seccomp: filter,
		},
	}
}

// process is what -e, -w and -u set for a container's process.
type process struct {
	env      map[string]string
	cwd      string
	uid, gid uint32
}

// numericUser parses run's -u: UID or UID:GID. Names need the container's
// own /etc/passwd, which the root filesystems cabind builds do not list
// users in.
func numericUser(s string) (uid, gid uint32, err error) {
	if s == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	n, err := strconv.ParseUint(u, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, 0, usagef("-u %q: cabin run takes UID or UID:GID", s)
	}
	uid = uint32(n)
	if hasGroup {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil || n == 1<<32-1 {
			return 0, 0, usagef("-u %q: cabin run takes UID or UID:GID", s)
		}
		gid = uint32(n)
	}
	return uid, gid, nil
}
