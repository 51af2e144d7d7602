package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// densityCount is the density part's own flag: how many idle VMs it packs
// onto the host.
var densityCount = flag.Int("count", 50, "VMs the density part starts (256 MiB each)")

// The density measurement: issue 24's idle VMs and its goals for them.
const (
	densityMemoryMiB = 256
	// densityIdle is how long every VM idles, after the last has started
	// and been exec'd into, before the measurement window.
	densityIdle = time.Minute
	// densityWindow is the window idle CPU is measured over.
	densityWindow = 30 * time.Second
	// densityCPUGoal is issue 24's idle CPU goal: 0.5 % of a core, as CPU
	// time over the window.
	densityCPUGoal = densityWindow / 200
	// densityBareGoal is the largest idle CPU of a cabin VM against a bare
	// guest's.
	densityBareGoal = 1.2
	// densityExecGoal is how soon every idle VM must answer an exec.
	densityExecGoal = time.Second
	// densityReserve is the host memory left free below what the VMs
	// started so far take: a start that would eat into it is not made.
	densityReserve = 2 << 30
	// densityPerVM is what one more VM is budgeted before it starts: its
	// guest RAM in full and QEMU's own memory. An idle VM takes less
	// (free page reporting); a busy one may take all of it.
	densityPerVM = (densityMemoryMiB + 128) * mib
	// densityPoll is how often cabind is asked for ListVms throughout.
	densityPoll = time.Second
)

// densityVM is one VM of the density measurement.
type densityVM struct {
	name string
	pid  int
	boot time.Duration
}

// benchDensity starts up to -count idle 256 MiB VMs through cabind one
// after another, each exec'd into once, beside a bare guest (the same QEMU
// command with a shell-only initramfs); after a minute of idle it measures
// each QEMU's CPU over 30 s and its PSS, cabind's RSS, the agent's RSS,
// then has every VM answer an exec. cabind is asked ListVms every second
// throughout. Every VM is stopped at the end, and on Ctrl-C.
func benchDensity(ctx context.Context, e *env, t *table) error {
	count := *densityCount
	if count < 1 {
		return fmt.Errorf("-count %d: want at least 1", count)
	}
	bare, err := startBare(ctx, e)
	if err != nil {
		return fmt.Errorf("bare guest: %w", err)
	}
	defer bare.close()

	poll := pollListVms(ctx, e)
	defer poll.stop()

	var (
		vms      []densityVM
		startErr error
	)
	defer func() { stopDensity(e, vms) }()
	for i := 0; i < count; i++ {
		avail, err := memAvailable()
		if err != nil {
			return err
		}
		if avail < densityReserve+densityPerVM {
			progress("density: stopping at %d VMs of %d: %.1f GiB available, a VM more needs %.1f GiB with %.0f GiB kept free",
				len(vms), count, float64(avail)/(1<<30), float64(densityPerVM)/(1<<30), float64(densityReserve)/(1<<30))
			break
		}
		vm := densityVM{name: fmt.Sprintf("density%03d", i)}
		d, resp, err := startAndWait(ctx, e.cc, &cabinv1.StartVmRequest{
			Request:   &concierge.StartVmRequest{Name: vm.name, Cpus: benchCPUs},
			MemoryMib: densityMemoryMiB,
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A VM that does not start (its agent late past cabind's
			// timeout on a loaded host, say) ends the packing, not the
			// measurement of those that run.
			startErr = fmt.Errorf("%s: %w", vm.name, err)
			progress("density: stopping at %d VMs of %d: %v", len(vms), count, startErr)
			break
		}
		vm.boot, vm.pid = d, int(resp.GetVmInfo().GetPid())
		vms = append(vms, vm)
		if _, err := execIO(ctx, e.cc, vm.name, nil, "true"); err != nil {
			return fmt.Errorf("%s: exec: %w", vm.name, err)
		}
		if i%10 == 9 || i == count-1 {
			progress("density: %d VMs up, the last booted in %v", len(vms), d.Round(time.Millisecond))
		}
	}
	if len(vms) == 0 {
		return errors.New("no VM started")
	}

	progress("density: %d VMs idle for %v, then measured for %v", len(vms), densityIdle, densityWindow)
	if err := sleepCtx(ctx, densityIdle); err != nil {
		return err
	}
	last := vms[len(vms)-1].name
	// The guest's profile only explains: its failure costs the run
	// nothing else.
	before, profErr := guestProfile(ctx, e, last)
	pids := make([]int, 0, len(vms)+1)
	for _, vm := range vms {
		pids = append(pids, vm.pid)
	}
	pids = append(pids, bare.pid, e.cabind.Process.Pid)
	// ksmd is a kernel thread: its CPU is read, it has no PSS.
	ksmd := ksmdPID()
	var ksmdStart procCPU
	if ksmd > 0 {
		if ksmdStart, err = readProcCPU(ksmd); err != nil {
			return fmt.Errorf("ksmd: %w", err)
		}
	}
	win, err := measureIdle(ctx, pids, densityWindow)
	if err != nil {
		return err
	}
	var ksmdCPU time.Duration
	if ksmd > 0 {
		end, err := readProcCPU(ksmd)
		if err != nil {
			return fmt.Errorf("ksmd: %w", err)
		}
		ksmdCPU = end.cpu - ksmdStart.cpu
	}
	after, err := guestProfile(ctx, e, last)
	if profErr == nil {
		profErr = err
	}
	daemonRSS, err := pidRSS(e.cabind.Process.Pid)
	if err != nil {
		return fmt.Errorf("cabind: %w", err)
	}
	agent, err := execIO(ctx, e.cc, last, nil, "cat", "/proc/1/status")
	if err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	agentRSS, err := meminfoField(agent, "VmRSS")
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}

	execs, err := execAll(ctx, e, vms)
	if err != nil {
		return err
	}
	slowest := slices.Max(execs)
	late := 0
	for _, d := range execs {
		if d > densityExecGoal {
			late++
		}
	}
	served := poll.stop()

	cabin, bareSample, daemon := win[:len(vms)], win[len(vms)], win[len(vms)+1]
	cpu := make([]time.Duration, len(cabin))
	var pssSum int64
	for i, s := range cabin {
		cpu[i] = s.cpu
		pssSum += s.pss
	}
	cpuMed := median(cpu)
	share := daemonRSS / int64(len(vms))
	perVM := pssSum/int64(len(vms)) + share
	n := len(vms)
	t.add(row{metric: fmt.Sprintf("density: idle CPU per VM (%d VMs, %v)", n, densityWindow),
		value: cpuMed, baseline: "bare guest", base: max(bareSample.cpu, 10*time.Millisecond), goal: densityBareGoal,
		detail: fmt.Sprintf("median %.2f %% of a core (%s over %d VMs, in CPU time over %v); bare guest %.2f %%; all %d VMs together %.1f %% of a core; QEMU wake-ups %.1f/s per VM (median), bare %.1f/s; cabind %.2f %% of a core, %.1f wake-ups/s",
			pct(cpuMed), spread(cpu), n, densityWindow, pct(bareSample.cpu), n, pct(sumDur(cpu)),
			medianRate(wakeRates(cabin)), bareSample.wakeups, pct(daemon.cpu), daemon.wakeups)})
	t.add(row{metric: "density: idle CPU per VM against 0.5 % of a core", value: cpuMed,
		baseline: "0.5 % of a core", base: densityCPUGoal, goal: 1})
	t.add(row{metric: fmt.Sprintf("density: idle 256 MiB VM (%d VMs; mean QEMU PSS + cabind's RSS / VMs)", n),
		bytes: perVM, limit: idleGoal,
		detail: fmt.Sprintf("QEMU PSS %s; bare guest's QEMU PSS %.1f MiB; cabind RSS %.1f MiB (%.2f MiB a VM); the agent's RSS in %s %.1f MiB; all VMs' QEMU PSS %.2f GiB",
			pssSpread(cabin), float64(bareSample.pss)/mib, float64(daemonRSS)/mib, float64(share)/mib, last,
			float64(agentRSS)/mib, float64(pssSum)/(1<<30))})
	t.add(row{metric: fmt.Sprintf("density: boot of VM %d against the first (StartVm → VmStarted)", n),
		value: vms[n-1].boot, baseline: "first VM", base: vms[0].boot,
		detail: fmt.Sprintf("%d VMs started of %d asked; boots %s%s", n, count, spread(bootTimes(vms)), startNote(startErr))})
	t.add(row{metric: fmt.Sprintf("density: slowest exec of `true` over %d idle VMs", n),
		value: slowest, baseline: "1 s", base: densityExecGoal, goal: 1,
		detail: fmt.Sprintf("%s; %d over a second", spread(execs), late)})
	t.add(row{metric: "density: slowest ListVms throughout", value: served.slowest, baseline: "1 s", base: time.Second, goal: 1,
		detail: fmt.Sprintf("%d calls, %d failed (%v)", served.calls, served.failed, served.err)})
	if profErr != nil {
		progress("density: guest %s: no profile: %v", last, profErr)
	} else {
		progress("density: guest %s over %v: %s", last, densityWindow, profileDelta(before, after))
	}
	if ksmd > 0 {
		progress("density: KSM on: ksmd %.2f %% of a core; %s", pct(ksmdCPU), ksmState())
	}
	if served.failed > 0 {
		return fmt.Errorf("cabind failed %d of %d ListVms: %w", served.failed, served.calls, served.err)
	}
	return nil
}

// execAll runs `true` in every VM, one after another, and returns how
// long each took.
func execAll(ctx context.Context, e *env, vms []densityVM) ([]time.Duration, error) {
	ds := make([]time.Duration, 0, len(vms))
	for _, vm := range vms {
		start := time.Now()
		if _, err := execIO(ctx, e.cc, vm.name, nil, "true"); err != nil {
			return nil, fmt.Errorf("%s: exec: %w", vm.name, err)
		}
		ds = append(ds, time.Since(start))
	}
	return ds, nil
}

// stopDensity stops the VMs, a few at a time, even when ctx was cancelled
// (Ctrl-C): nothing the bench started outlives it.
func stopDensity(e *env, vms []densityVM) {
	if len(vms) == 0 {
		return
	}
	progress("density: stopping %d VMs", len(vms))
	c := concierge.NewVmConciergeClient(e.cc)
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				resp, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: name})
				cancel()
				if err == nil && !resp.GetSuccess() {
					err = errors.New(resp.GetFailureReason())
				}
				if err != nil {
					progress("density: stop %s: %v", name, err)
				}
			}
		}()
	}
	for _, vm := range vms {
		work <- vm.name
	}
	close(work)
	wg.Wait()
}

// listPoll asks cabind for ListVms every densityPoll until stopped.
type listPoll struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	res    pollResult
}

type pollResult struct {
	calls, failed int
	slowest       time.Duration
	err           error
}

func pollListVms(ctx context.Context, e *env) *listPoll {
	ctx, cancel := context.WithCancel(ctx)
	p := &listPoll{cancel: cancel, done: make(chan struct{})}
	c := concierge.NewVmConciergeClient(e.cc)
	go func() {
		defer close(p.done)
		for {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			start := time.Now()
			_, err := c.ListVms(cctx, &concierge.ListVmsRequest{})
			d := time.Since(start)
			ccancel()
			if ctx.Err() != nil {
				return
			}
			p.res.calls++
			p.res.slowest = max(p.res.slowest, d)
			if err != nil {
				p.res.failed++
				p.res.err = err
			}
			if sleepCtx(ctx, densityPoll) != nil {
				return
			}
		}
	}()
	return p
}

// stop ends the polling and returns what it saw.
func (p *listPoll) stop() pollResult {
	p.once.Do(func() {
		p.cancel()
		<-p.done
	})
	return p.res
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func bootTimes(vms []densityVM) []time.Duration {
	ds := make([]time.Duration, len(vms))
	for i, vm := range vms {
		ds[i] = vm.boot
	}
	return ds
}

func sumDur(ds []time.Duration) time.Duration {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return s
}

// pct is CPU time over the window as a percentage of one core.
func pct(d time.Duration) float64 { return 100 * d.Seconds() / densityWindow.Seconds() }

func startNote(err error) string {
	if err == nil {
		return ""
	}
	return "; the next did not start: " + err.Error()
}
