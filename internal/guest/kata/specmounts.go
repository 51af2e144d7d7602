package kata

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// The guest's /proc and /sys are the VM's kernel: a container that had
// them bound in would see and change what is the agent's (every process,
// the VM's sysctls, its cgroups). A container gets a proc and a sysfs of
// its own instead, made for its namespaces.

// kernelDirs are the guest's kernel filesystems a spec may not bind.
var kernelDirs = []string{"/proc", "/sys"}

// procFiles are the files below /proc a bind may cover, as runc allows
// (lxcfs's views of them).
var procFiles = []string{
	"/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
	"/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev", "/proc/sys/kernel/ns_last_pid",
}

// checkSpecMounts refuses mounts that would give a container the guest's
// /proc or /sys, or put something else where its own go.
func checkSpecMounts(field string, mounts []specs.Mount) error {
	for i, m := range mounts {
		f := fmt.Sprintf("%s[%d]", field, i)
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		dst := filepath.Clean(m.Destination)
		if bind {
			src := filepath.Clean(m.Source)
			for _, k := range kernelDirs {
				if src == k || strings.HasPrefix(src, k+"/") || src == "/" && slices.Contains(m.Options, "rbind") {
					return errdefs.InvalidArgument(f+".source", fmt.Sprintf("%q would give the container the guest's own %s; mount a %s of its own (type %s)",
						m.Source, k, k, map[string]string{"/proc": "proc", "/sys": "sysfs"}[k]))
				}
			}
		}
		switch {
		case dst == "/proc" && m.Type != "proc":
			return errdefs.InvalidArgument(f+".type", fmt.Sprintf("%q onto /proc; only a proc goes there", m.Type))
		case strings.HasPrefix(dst, "/proc/") && !slices.Contains(procFiles, dst):
			return errdefs.InvalidArgument(f+".destination", fmt.Sprintf("%q is below /proc, where only %s may be covered", m.Destination, strings.Join(procFiles, ", ")))
		case dst == "/sys" && m.Type != "sysfs":
			return errdefs.InvalidArgument(f+".type", fmt.Sprintf("%q onto /sys; only a sysfs goes there", m.Type))
		}
	}
	return nil
}
