package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Stats are a cgroup v2's counters in the shape of runc's (v1-style)
// stats, which Kata's clients read: times in nanoseconds, "max" as the
// largest uint64.
type Stats struct {
	CPU     CPUStats
	Memory  MemoryStats
	Pids    PidsStats
	IO      []IOEntry
	Hugetlb map[string]HugetlbStats
}

// CPUStats is cpu.stat's.
type CPUStats struct {
	Usage, User, System                      uint64 // ns
	Periods, ThrottledPeriods, ThrottledTime uint64
}

// MemoryStats is the memory controller's. Swap is v1's memory+swap, as
// runc reports it on v2.
type MemoryStats struct {
	Cache                           uint64
	Usage, MaxUsage, Limit, Failcnt uint64
	SwapUsage, SwapLimit            uint64
	Stat                            map[string]uint64
}

// PidsStats is pids.current and pids.max (0 for "max").
type PidsStats struct {
	Current, Limit uint64
}

// IOEntry is one counter of io.stat, named as v1's blkio tables are:
// Table is "service_bytes" (rbytes, wbytes) or "serviced" (rios, wios);
// Op is "Read", "Write" or "Discard".
type IOEntry struct {
	Table        string
	Major, Minor uint64
	Op           string
	Value        uint64
}

// HugetlbStats is one huge page size's usage, limit and failures.
type HugetlbStats struct {
	Usage, MaxUsage, Failcnt uint64
}

// ReadStats reads the stats of the cgroup at dir. A controller the cgroup
// lacks leaves its part zero; a cgroup that is gone is an error.
func ReadStats(dir string) (Stats, error) {
	var st Stats
	if _, err := os.Stat(filepath.Join(dir, procs)); err != nil {
		return st, fmt.Errorf("cgroup: %w", err)
	}
	var errs []error
	read := func(file string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		return b
	}
	value := func(file string) uint64 {
		v, err := ParseValue(read(file))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
		}
		return v
	}

	cpu := ParseFlatKeyed(read("cpu.stat"))
	st.CPU = CPUStats{
		Usage: cpu["usage_usec"] * 1000, User: cpu["user_usec"] * 1000, System: cpu["system_usec"] * 1000,
		Periods: cpu["nr_periods"], ThrottledPeriods: cpu["nr_throttled"], ThrottledTime: cpu["throttled_usec"] * 1000,
	}

	if _, err := os.Stat(filepath.Join(dir, "memory.current")); err == nil {
		m := &st.Memory
		m.Stat = ParseFlatKeyed(read("memory.stat"))
		m.Cache = m.Stat["file"]
		m.Usage, m.Limit, m.MaxUsage = value("memory.current"), value(memoryMax), value("memory.peak")
		// v1's failcnt counted hitting the limit; v2's memory.events
		// "max" does.
		m.Failcnt = ParseFlatKeyed(read("memory.events"))["max"]
		swap, swapLimit := value("memory.swap.current"), value("memory.swap.max")
		m.SwapUsage = m.Usage + swap
		// No swap accounting reads as no swap: a limit of the memory's.
		m.SwapLimit = math.MaxUint64
		if swapLimit != math.MaxUint64 && m.Limit != math.MaxUint64 {
			m.SwapLimit = m.Limit + swapLimit
		}
	}

	if _, err := os.Stat(filepath.Join(dir, "pids.current")); err == nil {
		st.Pids.Current = value("pids.current")
		if l := value(pidsMax); l != math.MaxUint64 {
			st.Pids.Limit = l
		}
	}

	st.IO = ParseIOStat(read("io.stat"))

	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		size, ok := strings.CutPrefix(e.Name(), "hugetlb.")
		if !ok {
			continue
		}
		size, ok = strings.CutSuffix(size, ".current")
		if !ok || strings.Contains(size, ".") {
			continue
		}
		if st.Hugetlb == nil {
			st.Hugetlb = map[string]HugetlbStats{}
		}
		h := HugetlbStats{Usage: value("hugetlb." + size + ".current")}
		h.Failcnt = ParseFlatKeyed(read("hugetlb." + size + ".events"))["max"]
		st.Hugetlb[size] = h
	}
	return st, errors.Join(errs...)
}

// ParseValue parses a single-value cgroup file: a number, or "max" as the
// largest uint64. Nothing (a file that is not there) is 0.
func ParseValue(b []byte) (uint64, error) {
	s := strings.TrimSpace(string(b))
	switch s {
	case "":
		return 0, nil
	case "max":
		return math.MaxUint64, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// ParseFlatKeyed parses a flat keyed cgroup file ("key value" lines:
// cpu.stat, memory.stat, memory.events). Lines that are not a key and an
// unsigned number are skipped.
func ParseFlatKeyed(b []byte) map[string]uint64 {
	m := map[string]uint64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok || k == "" {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		m[k] = n
	}
	return m
}

// ioOps maps io.stat's keys to v1's blkio tables and ops.
var ioOps = map[string][2]string{
	"rbytes": {"service_bytes", "Read"},
	"wbytes": {"service_bytes", "Write"},
	"dbytes": {"service_bytes", "Discard"},
	"rios":   {"serviced", "Read"},
	"wios":   {"serviced", "Write"},
	"dios":   {"serviced", "Discard"},
}

// ParseIOStat parses io.stat ("MAJ:MIN rbytes=N wbytes=N rios=N ..." a
// line per device) into v1-shaped entries, as runc maps them. Malformed
// lines and fields are skipped.
func ParseIOStat(b []byte) []IOEntry {
	var out []IOEntry
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		maj, min, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		major, err1 := strconv.ParseUint(maj, 10, 32)
		minor, err2 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			op, known := ioOps[k]
			if !ok || !known {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			out = append(out, IOEntry{Table: op[0], Major: major, Minor: minor, Op: op[1], Value: n})
		}
	}
	return out
}
