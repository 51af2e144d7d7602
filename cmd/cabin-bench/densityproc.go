package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture that cabin runs on).
const clockTick = 10 * time.Millisecond

// idleSample is what one QEMU did over a measurement window: its CPU
// time, its threads' wake-ups a second, and its PSS at the end.
type idleSample struct {
	cpu     time.Duration
	wakeups float64
	pss     int64
}

// procCPU is a process's CPU time and its threads' wake-ups so far.
type procCPU struct {
	cpu   time.Duration
	runs  uint64
	taken time.Time
}

// readProcCPU reads pid's utime+stime and the sum of its threads' run
// counts (the third field of each /proc/PID/task/TID/schedstat: times
// the thread was put on a CPU, so one a wake-up of an idle thread).
func readProcCPU(pid int) (procCPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procCPU{}, err
	}
	ticks, err := parseStatCPU(b)
	if err != nil {
		return procCPU{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	p := procCPU{cpu: time.Duration(ticks) * clockTick, taken: time.Now()}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil {
		return procCPU{}, err
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			// A thread that ended between the glob and the read.
			continue
		}
		runs, err := parseSchedstatRuns(b)
		if err != nil {
			return procCPU{}, fmt.Errorf("%s: %w", f, err)
		}
		p.runs += runs
	}
	return p, nil
}

// parseStatCPU returns utime+stime, in clock ticks, from the text of a
// /proc/PID/stat. The command name (field 2) is in parentheses and may
// hold spaces and parentheses itself: fields are counted after the last
// ')'.
func parseStatCPU(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no ')' after the command name")
	}
	// After ")": state is field 3; utime and stime are fields 14 and 15.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	if utime+stime < utime {
		return 0, errors.New("utime+stime overflows")
	}
	return utime + stime, nil
}

// parseSchedstatRuns returns the third field of a schedstat line: run_ns
// wait_ns timeslices.
func parseSchedstatRuns(b []byte) (uint64, error) {
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return 0, fmt.Errorf("%d fields, want 3", len(f))
	}
	return strconv.ParseUint(f[2], 10, 64)
}

// measureIdle samples every pid's CPU at the start and the end of a
// window of length d, and its PSS at the end.
func measureIdle(ctx context.Context, pids []int, d time.Duration) ([]idleSample, error) {
	start := make([]procCPU, len(pids))
	for i, pid := range pids {
		var err error
		if start[i], err = readProcCPU(pid); err != nil {
			return nil, err
		}
	}
	if err := sleepCtx(ctx, d); err != nil {
		return nil, err
	}
	out := make([]idleSample, len(pids))
	for i, pid := range pids {
		end, err := readProcCPU(pid)
		if err != nil {
			return nil, err
		}
		out[i].cpu = end.cpu - start[i].cpu
		out[i].wakeups = float64(end.runs-start[i].runs) / end.taken.Sub(start[i].taken).Seconds()
		if out[i].pss, err = pss(pid); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func wakeRates(s []idleSample) []float64 {
	r := make([]float64, len(s))
	for i, x := range s {
		r[i] = x.wakeups
	}
	return r
}

func pssSpread(s []idleSample) string {
	p := make([]int64, len(s))
	for i, x := range s {
		p[i] = x.pss
	}
	slices.Sort(p)
	return fmt.Sprintf("min %.1f med %.1f max %.1f MiB", float64(p[0])/mib, float64(p[len(p)/2])/mib, float64(p[len(p)-1])/mib)
}

// memAvailable is the host's MemAvailable.
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return meminfoField(b, "MemAvailable")
}

// pidRSS is a host process's VmRSS.
func pidRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return meminfoField(b, "VmRSS")
}

// guestSnapshot is what wakes a guest: its interrupts by source and its
// agent's threads' run counts.
type guestSnapshot struct {
	irqs  map[string]uint64
	agent uint64
	// sched tells whether the kernel keeps per-task schedstat
	// (CONFIG_SCHED_INFO; cabin's minimal kernel does not).
	sched bool
}

// guestProfileScript prints the guest's /proc/interrupts, a separator, and
// the agent's threads' schedstat lines where the kernel keeps them.
const guestProfileScript = "cat /proc/interrupts; echo --; cat /proc/1/task/*/schedstat 2>/dev/null; true"

// guestProfile snapshots vm's interrupts and its agent's wake-ups.
func guestProfile(ctx context.Context, e *env, vm string) (guestSnapshot, error) {
	out, err := execIO(ctx, e.cc, vm, nil, "sh", "-c", guestProfileScript)
	if err != nil {
		return guestSnapshot{}, fmt.Errorf("guest profile: %w", err)
	}
	irq, sched, ok := bytes.Cut(out, []byte("--\n"))
	if !ok {
		return guestSnapshot{}, errors.New("guest profile: no separator")
	}
	s := guestSnapshot{}
	if s.irqs, err = parseInterrupts(irq); err != nil {
		return guestSnapshot{}, fmt.Errorf("guest /proc/interrupts: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(sched))
	for sc.Scan() {
		runs, err := parseSchedstatRuns(sc.Bytes())
		if err != nil {
			return guestSnapshot{}, fmt.Errorf("guest schedstat: %w", err)
		}
		s.agent += runs
		s.sched = true
	}
	return s, nil
}

// parseInterrupts reads /proc/interrupts into a count per source (the
// first column, with the device name after the counts where there is
// one: "LOC", "4 IO-APIC 4-edge ttyS0" → "4 ttyS0").
func parseInterrupts(b []byte) (map[string]uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	if !sc.Scan() {
		return nil, errors.New("empty")
	}
	cpus := len(strings.Fields(sc.Text()))
	if cpus == 0 {
		return nil, errors.New("no CPU columns")
	}
	m := map[string]uint64{}
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[0], ":")
		var sum uint64
		n := 0
		for _, v := range f[1:min(len(f), cpus+1)] {
			c, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				break
			}
			sum += c
			n++
		}
		if n == 0 {
			// ERR and MIS have one count; a line with none is not ours.
			continue
		}
		if rest := f[1+n:]; len(rest) > 0 {
			if _, err := strconv.Atoi(name); err == nil {
				name += " " + rest[len(rest)-1]
			}
		}
		m[name] += sum
	}
	return m, nil
}

// profileDelta describes what woke the guest between two snapshots: its
// busiest interrupt sources, and its agent's wake-ups.
func profileDelta(before, after guestSnapshot) string {
	type src struct {
		name string
		n    uint64
	}
	var srcs []src
	for name, n := range after.irqs {
		if d := n - before.irqs[name]; n > before.irqs[name] {
			srcs = append(srcs, src{name, d})
		}
	}
	slices.SortFunc(srcs, func(a, b src) int { return int(b.n) - int(a.n) })
	parts := make([]string, 0, len(srcs)+1)
	for _, s := range srcs[:min(len(srcs), 8)] {
		parts = append(parts, fmt.Sprintf("%s %d", s.name, s.n))
	}
	if after.sched && before.sched {
		parts = append(parts, fmt.Sprintf("agent threads ran %d times", after.agent-before.agent))
	} else {
		parts = append(parts, "agent threads' runs unknown (no schedstat in this kernel)")
	}
	return "interrupts " + strings.Join(parts, ", ")
}

// ksmdPID is the host's ksmd thread when KSM runs (the operator set
// /sys/kernel/mm/ksm/run to 1; the bench never does), else 0.
func ksmdPID() int {
	b, err := os.ReadFile("/sys/kernel/mm/ksm/run")
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		return 0
	}
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.TrimSpace(string(b)) == "ksmd" {
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(c)))
			if err == nil {
				return pid
			}
		}
	}
	return 0
}

// ksmState is KSM's page counts, in MiB.
func ksmState() string {
	var parts []string
	for _, k := range []string{"pages_shared", "pages_sharing", "pages_unshared", "full_scans"} {
		b, err := os.ReadFile(filepath.Join("/sys/kernel/mm/ksm", k))
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			continue
		}
		if k == "full_scans" {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1f MiB", k, float64(n*int64(os.Getpagesize()))/mib))
	}
	return strings.Join(parts, ", ")
}
