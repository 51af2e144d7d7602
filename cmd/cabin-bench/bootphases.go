package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// The boot phases part boots the VM cabind would boot, directly (so that
// the host side is timed too), and splits each boot into phases read from
// real timestamps: the host's clock around the launch, the kernel's
// printk timestamps (dmesg, read through the agent once it serves) and
// the agent's own boot marks, which it writes to the kernel log
// (bootcfg.BootMarkPrefix). The guest's clock starts when its vCPU
// first runs (TCG counts the TSC only while the VM runs), which is when
// the bench resumes the paused QEMU.
//
// A variant (another kernel, more kernel arguments) boots in turn with the
// image's kernel, in the same run, so that drift in the host's load hits
// both alike.
var (
	phasesKernel = flag.String("phases-kernel", "", "bootphases: also boot this kernel (an uncompressed PVH vmlinux) in turn with the image's, and compare")
	phasesArgs   = flag.String("phases-args", "", "bootphases: also boot with these extra kernel arguments (space-separated) in turn, and compare")
	phasesPIT    = flag.Bool("phases-pit", false, "bootphases: also boot with the i8254 PIT (which cabin leaves out) in turn, and compare")
	phasesIdle   = flag.Duration("phases-idle", 0, "bootphases: after each boot, measure QEMU's CPU over this long of idle (0: not at all)")
)

// A phase ends at a kernel message (prefix) or at an agent boot mark.
type phaseEnd struct {
	name   string
	prefix string // kernel message prefix, or
	mark   string // agent boot mark
}

// bootPhaseEnds are in boot order. A phase whose end a kernel does not
// print (the W+X check of a kernel without it) is left out of that boot,
// its time going to the next phase.
var bootPhaseEnds = []phaseEnd{
	{name: "kernel: vCPU runs → command line parsed", prefix: "Kernel command line:"},
	{name: "kernel: memory, IRQs, timers, APIC calibration", prefix: "Calibrating delay loop"},
	{name: "kernel: code patching (alternatives)", prefix: "Freeing SMP alternatives memory"},
	{name: "kernel: initcalls to the initramfs", prefix: "Trying to unpack rootfs image as initramfs"},
	{name: "kernel: initramfs unpacked (async, with initcalls)", prefix: "Freeing initrd memory"},
	{name: "kernel: initcalls after", prefix: "Freeing unused kernel image (initmem)"},
	{name: "kernel: W+X page check", prefix: "x86/mm: Checked W+X mappings"},
	{name: "kernel: → run /init", prefix: "Run /init as init process"},
	{name: "agent: Go runtime and package init → main", mark: bootcfg.MarkMain},
	{name: "agent: mounts, cgroups", mark: bootcfg.MarkSetup},
	{name: "agent: boot modules", mark: bootcfg.MarkModules},
	{name: "agent: ports open", mark: bootcfg.MarkPorts},
	{name: "agent: VmReady acknowledged", mark: bootcfg.MarkReady},
}

// bootSample is one boot, split up.
type bootSample struct {
	launch  time.Duration            // launch → QEMU up, paused, sockets listening
	zero    time.Duration            // QEMU up → the guest's clock at 0 (clockSync)
	phases  map[string]time.Duration // guest phases by name
	ports   time.Duration            // guest clock at the agent's ports mark
	heard   time.Duration            // QEMU up → the bench heard VmReady
	total   time.Duration            // launch → VmReady heard
	syncErr time.Duration            // how far off zero may be: half the sync's round trip
	cpu     time.Duration            // QEMU's CPU time from its start to VmReady heard
	idleCPU time.Duration            // QEMU's CPU over *phasesIdle
	pss     int64                    // QEMU's PSS after the idle window
}

type phaseVariant struct {
	name   string
	kernel string
	args   []string
	pit    bool
}

func benchBootPhases(ctx context.Context, e *env, runs int, t *table) error {
	variants := []phaseVariant{{name: "image", kernel: e.kernel}}
	if *phasesKernel != "" {
		if _, err := os.Stat(*phasesKernel); err != nil {
			return fmt.Errorf("phases-kernel: %w", err)
		}
		variants = append(variants, phaseVariant{name: "kernel " + filepath.Base(*phasesKernel), kernel: *phasesKernel})
	}
	if *phasesArgs != "" {
		variants = append(variants, phaseVariant{name: "+" + *phasesArgs, kernel: e.kernel, args: strings.Fields(*phasesArgs)})
	}
	if *phasesPIT {
		variants = append(variants, phaseVariant{name: "with the PIT", kernel: e.kernel, pit: true})
	}
	samples := make([][]bootSample, len(variants))
	for i := 0; i < runs; i++ {
		for k := range variants {
			// Take turns at going first.
			j := (k + i) % len(variants)
			s, err := bootPhased(ctx, e, fmt.Sprintf("phases%d-%d", j, i), variants[j])
			if err != nil {
				return fmt.Errorf("%s: %w", variants[j].name, err)
			}
			samples[j] = append(samples[j], s)
		}
	}
	base := summarize(samples[0])
	for j, v := range variants {
		sum := summarize(samples[j])
		for _, p := range sum.order {
			// The image's own boot is shown against itself; a variant
			// against it, in the same run. (A baseline recorded in another
			// run says little here: the host's load moves boot times by
			// more than the changes measured, docs/decisions.md §30.)
			r := row{metric: "boot phase: " + p, value: sum.med[p], baseline: "-", base: sum.med[p]}
			if j > 0 {
				r.metric += " [" + v.name + "]"
				if base.med[p] > 0 {
					r.baseline, r.base = "image", base.med[p]
				}
			}
			r.detail = sum.spread[p]
			if r.baseline != "-" {
				r.detail = fmt.Sprintf("Δ %+v; %s", round(r.value-r.base), r.detail)
			}
			t.add(r)
		}
		if *phasesIdle > 0 {
			var cpu []time.Duration
			var pssSum int64
			for _, s := range samples[j] {
				cpu = append(cpu, s.idleCPU)
				pssSum += s.pss
			}
			t.add(row{metric: fmt.Sprintf("boot phases [%s]: QEMU CPU idle over %s", v.name, *phasesIdle),
				value: median(cpu), baseline: "-", base: median(cpu),
				detail: fmt.Sprintf("%s; mean PSS %.1f MiB", spread(cpu), float64(pssSum)/float64(len(samples[j]))/mib)})
		}
	}
	return nil
}

// phaseSummary has the medians of each phase, in boot order.
type phaseSummary struct {
	order  []string
	med    map[string]time.Duration
	spread map[string]string
}

func summarize(ss []bootSample) phaseSummary {
	sum := phaseSummary{med: map[string]time.Duration{}, spread: map[string]string{}}
	add := func(name string, pick func(bootSample) (time.Duration, bool)) {
		var ds []time.Duration
		for _, s := range ss {
			if d, ok := pick(s); ok {
				ds = append(ds, d)
			}
		}
		if len(ds) == 0 {
			return
		}
		sum.order = append(sum.order, name)
		sum.med[name] = median(ds)
		sum.spread[name] = spread(ds)
	}
	add("host: QEMU started, paused, sockets up", func(s bootSample) (time.Duration, bool) { return s.launch, true })
	add("host: QEMU up → guest clock 0 (resume, image load)", func(s bootSample) (time.Duration, bool) { return s.zero, true })
	for _, p := range bootPhaseEnds {
		add(p.name, func(s bootSample) (time.Duration, bool) { d, ok := s.phases[p.name]; return d, ok })
	}
	add("host: agent's ports open → VmReady heard", func(s bootSample) (time.Duration, bool) { return s.heard - s.zero - s.ports, true })
	add("clock sync uncertainty (±)", func(s bootSample) (time.Duration, bool) { return s.syncErr, true })
	add("total: launch → VmReady heard", func(s bootSample) (time.Duration, bool) { return s.total, true })
	// What a boot costs the host's CPUs, which the load of other work on
	// the host changes far less than the times above: the one to compare
	// variants by on a busy host.
	add("QEMU CPU time: launch → VmReady heard", func(s bootSample) (time.Duration, bool) { return s.cpu, true })
	return sum
}

// bootPhased boots v once, directly, and splits the boot into phases.
func bootPhased(ctx context.Context, e *env, name string, v phaseVariant) (s bootSample, err error) {
	t0 := time.Now()
	vm, dir, err := e.launchPhased(ctx, name, v)
	if err != nil {
		return s, err
	}
	defer kill(vm)
	s.launch = time.Since(t0)
	sess, err := channel.DialSocket(dir.AgentSocket(), e.log)
	if err != nil {
		return s, err
	}
	defer sess.Close()
	ack := &startupAck{ready: make(chan struct{})}
	srv := channel.NewServer(e.log)
	vmtools.RegisterStartupListenerServer(srv, ack)
	go srv.Serve(sess)
	defer srv.Stop()
	tUp := time.Now()
	if err := vm.Resume(ctx); err != nil {
		return s, err
	}
	select {
	case <-ack.ready:
	case <-vm.Done():
		return s, errors.New("QEMU exited before the agent reported in")
	case <-time.After(60 * time.Second):
		return s, errors.New("agent did not report in")
	case <-ctx.Done():
		return s, ctx.Err()
	}
	s.heard = time.Since(tUp)
	s.total = time.Since(t0)
	pid := vm.PID()
	cpu, err := readProcCPU(pid)
	if err != nil {
		return s, err
	}
	s.cpu = cpu.cpu
	cc, err := channel.Dial(sess, dir.RPCSocket())
	if err != nil {
		return s, err
	}
	defer cc.Close()
	// The guest's clock against the host's: a line the bench has the
	// guest write to the kernel log between two readings of its own
	// clock, then the log.
	t1 := time.Since(tUp)
	out, err := runIn(ctx, cc, "/bin/sh", "-c", "echo '"+clockSync+"' >/dev/kmsg && dmesg")
	if err != nil {
		return s, fmt.Errorf("dmesg: %w", err)
	}
	t2 := time.Since(tUp)
	lines := parseDmesg(out)
	var sync time.Duration
	if sync, err = syncAt(lines); err != nil {
		return s, err
	}
	s.zero, s.syncErr = (t1+t2)/2-sync, (t2-t1)/2
	if s.phases, s.ports, err = splitBoot(lines); err != nil {
		return s, err
	}
	if *phasesIdle > 0 {
		if s.idleCPU, s.pss, err = idleCost(ctx, pid, *phasesIdle); err != nil {
			return s, err
		}
	}
	return s, nil
}

// launchPhased starts v's VM with the QEMU command cabind would use,
// without cabind, paused (launchDirect with a kernel and arguments).
func (e *env) launchPhased(ctx context.Context, name string, v phaseVariant) (hypervisor.VM, statedir.VMDir, error) {
	dir := e.direct.VM(statedir.VMID("", name))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		return nil, "", err
	}
	args, err := bootcfg.Params{Hostname: bootcfg.Hostname(name)}.Args()
	if err != nil {
		return nil, "", err
	}
	cfg := hypervisor.Config{
		Name: name, Dir: dir, Machine: hypervisor.MachineMicroVM, PIT: v.pit, Accel: e.accel,
		CPUs: benchCPUs, MemoryMiB: benchMemoryMiB,
		Kernel: v.kernel, Initrd: e.initrd, KernelArgs: append(args, v.args...),
	}
	return e.launch(ctx, cfg)
}

// idleCost measures QEMU's (pid's) CPU time over d of idle, then its
// PSS.
func idleCost(ctx context.Context, pid int, d time.Duration) (time.Duration, int64, error) {
	before, err := readProcCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	after, err := readProcCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	p, err := pss(pid)
	return after.cpu - before.cpu, p, err
}

// runIn runs argv in the guest over cc (the agent's Exec) and returns its
// stdout.
func runIn(ctx context.Context, cc grpc.ClientConnInterface, argv ...string) ([]byte, error) {
	stream, err := execv1.NewExecClient(cc).Exec(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: &execv1.ExecStart{Argv: argv}}}); err != nil {
		return nil, err
	}
	stream.CloseSend()
	return execOutput(stream, argv)
}

// clockSync is the kernel log line the bench writes to find the guest's
// clock on its own.
const clockSync = "cabin-bench: clock sync"

// syncAt finds the printk timestamp of the clockSync line.
func syncAt(lines []kmsgLine) (time.Duration, error) {
	for _, l := range lines {
		if l.msg == clockSync {
			return l.at, nil
		}
	}
	return 0, errors.New("kernel log: no clock sync line")
}

// kmsgLine is one kernel log message with its printk timestamp.
type kmsgLine struct {
	at  time.Duration
	msg string
}

// parseDmesg reads dmesg's output: "[    1.234567] message" lines. Lines
// without a timestamp (a message's continuation) are skipped.
func parseDmesg(b []byte) []kmsgLine {
	var out []kmsgLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "[")
		if !ok {
			continue
		}
		ts, msg, ok := strings.Cut(rest, "]")
		if !ok {
			continue
		}
		secs, frac, ok := strings.Cut(strings.TrimSpace(ts), ".")
		if !ok || len(frac) != 6 {
			continue
		}
		s, err1 := strconv.ParseUint(secs, 10, 32)
		us, err2 := strconv.ParseUint(frac, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, kmsgLine{
			at:  time.Duration(s)*time.Second + time.Duration(us)*time.Microsecond,
			msg: strings.TrimPrefix(msg, " "),
		})
	}
	return out
}

// splitBoot turns a boot's kernel log into phase durations, and returns
// the guest's clock at the agent's ports mark. Each phase ends at its
// first occurrence; one whose end is missing is left out.
func splitBoot(lines []kmsgLine) (map[string]time.Duration, time.Duration, error) {
	at := map[string]time.Duration{}
	marks := map[string]time.Duration{}
	for _, l := range lines {
		m, ok, err := bootcfg.ParseBootMarks(l.msg)
		if err != nil {
			return nil, 0, err
		}
		if ok {
			for name, off := range m {
				marks[name] = l.at + off
			}
			continue
		}
		for _, p := range bootPhaseEnds {
			if _, seen := at[p.name]; !seen && p.prefix != "" && strings.HasPrefix(l.msg, p.prefix) {
				at[p.name] = l.at
			}
		}
	}
	for _, p := range bootPhaseEnds {
		if p.mark != "" {
			if t, ok := marks[p.mark]; ok {
				at[p.name] = t
			}
		}
	}
	ports, ok := marks[bootcfg.MarkPorts]
	if !ok {
		return nil, 0, errors.New("kernel log: no agent ports mark (an agent without boot marks?)")
	}
	phases := map[string]time.Duration{}
	var prev time.Duration
	for _, p := range bootPhaseEnds {
		t, ok := at[p.name]
		if !ok {
			continue
		}
		if t < prev {
			return nil, 0, fmt.Errorf("kernel log: %q at %v, before the phase before it (%v)", p.name, t, prev)
		}
		phases[p.name] = t - prev
		prev = t
	}
	return phases, ports, nil
}
