package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// The first-run part: what a user waits for on a VM just started, now
// that cabin-runtime comes from the guest image's share (docs/decisions.md
// §36): the first `cabin run --rm busybox true` after VmStarted (the agent
// mounting the share, the runtime read over 9p once) against the second
// on the same VM; and the VM's QEMU PSS just after it started, which is
// where an initramfs that stays in guest memory shows. Fresh VMs, one at
// a time.

const (
	firstRunVMs = 4
	firstRunVM  = "bench-first"
)

func benchFirstRun(ctx context.Context, e *env, o options, t *table) error {
	cabin := filepath.Join(o.bin, "cabin")
	if _, err := os.Stat(cabin); err != nil {
		return fmt.Errorf("cabin not found beside cabin-bench (run make build): %w", err)
	}
	run := func(vm string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, cabin, "run", "--rm", "--vm", vm, "busybox", "true")
		cmd.Env = append(os.Environ(), "CABIN_SOCKET="+filepath.Join(e.dir, "cabind.sock"))
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("cabin run on %s: %w: %s", vm, err, out)
		}
		return time.Since(start), nil
	}
	var first, second []time.Duration
	var psses []int64
	for i := range firstRunVMs {
		vm := fmt.Sprintf("%s%d", firstRunVM, i)
		_, resp, err := startAndWait(ctx, e.cc, &cabinv1.StartVmRequest{
			Request:   &concierge.StartVmRequest{Name: vm, Cpus: benchCPUs},
			MemoryMib: benchMemoryMiB,
		})
		if err != nil {
			return err
		}
		stop := func() {
			concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: vm})
		}
		p, err := pss(int(resp.GetVmInfo().GetPid()))
		if err != nil {
			stop()
			return err
		}
		a, err := run(vm)
		if err != nil {
			stop()
			return err
		}
		b, err := run(vm)
		stop()
		if err != nil {
			return err
		}
		first, second, psses = append(first, a), append(second, b), append(psses, p)
	}
	slices.Sort(psses)
	t.add(row{metric: "first run: cabin run --rm busybox true on a VM just started", value: median(first),
		baseline: "the second on it", base: median(second),
		detail: fmt.Sprintf("%d fresh VMs: first %s, second %s; QEMU PSS at VmStarted: min %.1f med %.1f max %.1f MiB",
			firstRunVMs, spread(first), spread(second),
			float64(psses[0])/mib, float64(psses[len(psses)/2])/mib, float64(psses[len(psses)-1])/mib)})
	return nil
}
