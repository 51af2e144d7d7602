package kata

import (
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// What a process may be given, checked before anything is made: an
// unknown name would otherwise fail late, in the container's init, or be
// dropped with a warning by libcontainer (capabilities), leaving the
// process with less, or more, than asked.

// rlimitNames are the resource limits of setrlimit(2).
var rlimitNames = []string{
	"RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
	"RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
	"RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
}

// checkRlimits checks a process's limits: known names, each once, soft
// not above hard.
func checkRlimits(field string, list []specs.POSIXRlimit) error {
	seen := map[string]bool{}
	for i, r := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case !slices.Contains(rlimitNames, r.Type):
			return errdefs.InvalidArgument(f+".Type", fmt.Sprintf("%q is not a resource limit (RLIMIT_NOFILE, ...)", r.Type))
		case seen[r.Type]:
			return errdefs.InvalidArgument(f+".Type", fmt.Sprintf("%s is given twice", r.Type))
		case r.Soft > r.Hard:
			return errdefs.InvalidArgument(f+".Soft", fmt.Sprintf("%d is above the hard limit %d", r.Soft, r.Hard))
		}
		seen[r.Type] = true
	}
	return nil
}

// capabilityNames are the kernel's capabilities, in number order (up to
// CAP_CHECKPOINT_RESTORE, 40: Linux 5.9 and later).
var capabilityNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// checkCapabilities checks that every capability named is one.
func checkCapabilities(field string, c *specs.LinuxCapabilities) error {
	if c == nil {
		return nil
	}
	for _, set := range []struct {
		name string
		caps []string
	}{
		{"Bounding", c.Bounding}, {"Effective", c.Effective}, {"Inheritable", c.Inheritable},
		{"Permitted", c.Permitted}, {"Ambient", c.Ambient},
	} {
		for i, name := range set.caps {
			if !slices.Contains(capabilityNames, name) {
				return errdefs.InvalidArgument(fmt.Sprintf("%s.%s[%d]", field, set.name, i), fmt.Sprintf("%q is not a capability (CAP_CHOWN, ...)", name))
			}
		}
	}
	return nil
}
