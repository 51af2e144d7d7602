package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// netns is a network namespace the bench made (ip netns add): whatever
// the network measurements set up lives in one, never in the host's own.
type netns string

func addNetns(name string) (netns, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	ns := netns(name)
	if err := ns.ip("link", "set", "lo", "up"); err != nil {
		ns.delete()
		return "", err
	}
	return ns, nil
}

func (ns netns) path() string { return filepath.Join("/run/netns", string(ns)) }

// ip runs ip(8) in the namespace.
func (ns netns) ip(args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", string(ns)}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// command is argv run in the namespace, under nsenter, which execs it:
// the process is argv's own, with nsenter's pid. It is killed when ctx
// ends.
func (ns netns) command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.path(), "--"}, argv...)...)
}

// pids lists the processes in the namespace.
func (ns netns) pids() []int {
	var want syscall.Stat_t
	if err := syscall.Stat(ns.path(), &want); err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", ent.Name(), "ns", "net"), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// delete kills whatever still runs in the namespace (all of it the
// bench's: a QEMU its cabind did not stop, say), then deletes it. A
// namespace a process still holds would outlive its name.
func (ns netns) delete() error {
	var errs []error
	if left := ns.pids(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes %v were left in %s; killed them", left, ns))
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for deadline := time.Now().Add(5 * time.Second); len(ns.pids()) > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if out, err := exec.Command("ip", "netns", "delete", string(ns)).CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("ip netns delete %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
	}
	return errors.Join(errs...)
}
