// Package cgroup is the guest's cgroup v2 tree as the agent lays it out, so
// that whatever containers and exec sessions do, the agent keeps the memory
// and tasks it needs to go on serving:
//
//	/sys/fs/cgroup          the agent (PID 1), cabin-runtime while it runs, Maitred's processes
//	└── cabin               cpu, memory and pids enabled below it
//	    ├── containers      the VM's memory and tasks less the reserve (Plan)
//	    │   └── ID          a container, at its spec's linux.cgroupsPath below here
//	    └── exec            the VM's memory and tasks less the agent's own reserve
//	        └── N           one exec session: everything it started, killed as one
//
// cgroup v2 lets only leaves hold processes once their parent shares out
// a controller ("no internal processes"), so cabin, containers and exec
// hold none; the root is exempt, which is where the agent stays. The cpu
// controller makes the containers one group to the scheduler beside the
// exec sessions and each of the agent's threads, so that a thousand
// runnable processes in a container get the CPU of one group, not a
// thousand times the agent's.
//
// The package writes the cgroup files itself rather than through
// opencontainers/cgroups: the agent needs a dozen writes, that library
// only works at /sys/fs/cgroup (these functions are tested on any
// directory), and the agent's memory budget has no room for its
// dependencies (docs/containers.md).
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Mount is where the guest mounts cgroup2 (guestinit.Mounts).
const Mount = "/sys/fs/cgroup"

// The names of cabin's cgroups below the mount.
const (
	topName        = "cabin"
	containersName = "containers"
	execName       = "exec"
)

// controllers are the controllers cabin's parents share out: memory and
// pids for the limits, cpu so that a container's processes compete as a
// group.
var controllers = []string{"cpu", "memory", "pids"}

// The cgroup files this package reads or writes.
const (
	subtreeControl = "cgroup.subtree_control"
	events         = "cgroup.events"
	kill           = "cgroup.kill"
	procs          = "cgroup.procs"
	memoryMax      = "memory.max"
	pidsMax        = "pids.max"
)

// writeFile writes value to the cgroup file name in dir. The file is not
// created: cgroupfs has every file it takes already (a missing one is a
// controller that is not enabled). Each write is one command, whatever the
// offset, so appending is the same to cgroupfs; a plain file standing in
// for one in a test then keeps every command.
func writeFile(dir, name, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		// The os errors name the file.
		return fmt.Errorf("write %q: %w", value, err)
	}
	return nil
}

// enable enables ctrls in dir's subtree_control, one at a time, so that
// one the kernel lacks does not keep the others off; the failures are
// joined.
func enable(dir string, ctrls []string) error {
	var errs []error
	for _, c := range ctrls {
		if err := writeFile(dir, subtreeControl, "+"+c); err != nil {
			errs = append(errs, fmt.Errorf("enable %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

// limit writes l to dir's memory.max and pids.max; a zero limit is left
// at the kernel's "max".
func limit(dir string, l Limits) error {
	var errs []error
	if l.Memory > 0 {
		errs = append(errs, writeFile(dir, memoryMax, fmt.Sprint(l.Memory)))
	}
	if l.Pids > 0 {
		errs = append(errs, writeFile(dir, pidsMax, fmt.Sprint(l.Pids)))
	}
	return errors.Join(errs...)
}

// populated reads whether dir's cgroup or a descendant holds a live
// process. Zombies do not count: cgroup v2 takes a task out at its exit.
func populated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, events))
	if err != nil {
		return false, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("%s: no populated field", filepath.Join(dir, events))
}
