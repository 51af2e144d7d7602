package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// The balloon measurement's VM: the size issue 24 sets its goal for.
const (
	balloonVM        = "bench-balloon"
	balloonMemoryMiB = 256
	// idleSettle is how long the VM idles before the second look: the
	// guest reports free pages once they have been free for 2 s.
	idleSettle = 10 * time.Second
	// idleGoal is issue 24's goal for an idle 256 MiB VM.
	idleGoal = 120 * mib
)

// benchBalloon measures what an idle VM costs the host (its QEMU's PSS
// and cabind's PSS shared among its VMs) when it has just started, after
// idling (free page reporting has given back what the guest freed), and
// after ReclaimVmMemory (caches dropped, balloon in and out), against
// what the guest itself uses (MemTotal - MemAvailable).
func benchBalloon(ctx context.Context, e *env, t *table) error {
	pid, err := startBalloonVM(ctx, e)
	if err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: balloonVM})
	look := func(when string) (host, qemuPSS, share, used int64, err error) {
		if qemuPSS, err = pss(pid); err != nil {
			return
		}
		var daemon int64
		if daemon, err = pss(e.cabind.Process.Pid); err != nil {
			return
		}
		list, lerr := concierge.NewVmConciergeClient(e.cc).ListVms(ctx, &concierge.ListVmsRequest{})
		if lerr != nil {
			err = lerr
			return
		}
		share = daemon / int64(max(len(list.GetVms()), 1))
		if used, err = guestUsed(ctx, e); err != nil {
			return
		}
		host = qemuPSS + share
		progress("balloon: %s: qemu pss %.1f MiB, cabind share %.1f MiB, guest uses %.1f MiB", when,
			float64(qemuPSS)/mib, float64(share)/mib, float64(used)/mib)
		return
	}
	add := func(metric, when string) error {
		host, qemuPSS, share, used, err := look(when)
		if err != nil {
			return fmt.Errorf("%s: %w", when, err)
		}
		t.add(row{metric: metric, bytes: host, limit: idleGoal, detail: fmt.Sprintf(
			"%s: qemu PSS %.1f MiB + cabind's share %.1f MiB; the guest's own MemTotal-MemAvailable %.1f MiB (host/guest %.2f×)",
			when, float64(qemuPSS)/mib, float64(share)/mib, float64(used)/mib, float64(host)/float64(used))})
		return nil
	}
	if err := add("memory: idle 256 MiB VM at VmStarted (QEMU PSS + cabind's share)", "at VmStarted"); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(idleSettle):
	}
	if err := add("memory: idle 256 MiB VM after 10 s idle (free page reporting)", "after 10 s idle"); err != nil {
		return err
	}
	start := time.Now()
	resp, err := concierge.NewVmConciergeClient(e.cc).ReclaimVmMemory(ctx, &concierge.ReclaimVmMemoryRequest{Name: balloonVM})
	if err != nil {
		return err
	}
	if !resp.GetSuccess() {
		return errors.New(resp.GetFailureReason())
	}
	progress("balloon: ReclaimVmMemory took %v", time.Since(start).Round(time.Millisecond))
	return add("memory: idle 256 MiB VM after ReclaimVmMemory", fmt.Sprintf("after ReclaimVmMemory (%v)", time.Since(start).Round(100*time.Millisecond)))
}

// startBalloonVM starts the balloon measurement's VM and returns its
// QEMU's pid once it has started.
func startBalloonVM(ctx context.Context, e *env) (int, error) {
	_, resp, err := startAndWait(ctx, e.cc, &cabinv1.StartVmRequest{
		Request:   &concierge.StartVmRequest{Name: balloonVM, Cpus: benchCPUs},
		MemoryMib: balloonMemoryMiB,
	})
	if err != nil {
		return 0, err
	}
	return int(resp.GetVmInfo().GetPid()), nil
}

// pss reads a process's proportional set size from smaps_rollup.
func pss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	return meminfoField(b, "Pss")
}

// guestUsed is the balloon VM's MemTotal - MemAvailable.
func guestUsed(ctx context.Context, e *env) (int64, error) {
	out, err := execIO(ctx, e.cc, balloonVM, nil, "cat", "/proc/meminfo")
	if err != nil {
		return 0, err
	}
	total, err := meminfoField(out, "MemTotal")
	if err != nil {
		return 0, err
	}
	avail, err := meminfoField(out, "MemAvailable")
	if err != nil {
		return 0, err
	}
	return total - avail, nil
}

// meminfoField reads "Name:   123 kB" from a meminfo-like text, in bytes.
func meminfoField(b []byte, name string) (int64, error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), name+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no %s", name)
}
