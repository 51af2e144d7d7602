package cgroup

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// v2Stats are a cgroup's files as a 6.x kernel writes them.
var v2Stats = map[string]string{
	"cpu.stat":                 "usage_usec 2500\nuser_usec 1500\nsystem_usec 1000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 700\nnr_bursts 0\nburst_usec 0\n",
	"memory.current":           "10485760\n",
	"memory.peak":              "20971520\n",
	"memory.max":               "67108864\n",
	"memory.swap.current":      "4096\n",
	"memory.swap.max":          "max\n",
	"memory.stat":              "anon 4194304\nfile 6291456\nkernel 262144\npgfault 1234\n",
	"memory.events":            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
	"pids.current":             "3\n",
	"pids.max":                 "max\n",
	"io.stat":                  "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
	"hugetlb.2MB.current":      "2097152\n",
	"hugetlb.2MB.events":       "max 2\n",
	"hugetlb.2MB.max":          "max\n",
	"hugetlb.2MB.rsvd.current": "0\n",
}

func TestReadStats(t *testing.T) {
	dir, _ := fakeCgroup(t, v2Stats)
	st, err := ReadStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUStats{Usage: 2500000, User: 1500000, System: 1000000, Periods: 10, ThrottledPeriods: 3, ThrottledTime: 700000}); st.CPU != want {
		t.Errorf("cpu %+v, want %+v", st.CPU, want)
	}
	m := st.Memory
	if m.Usage != 10<<20 || m.MaxUsage != 20<<20 || m.Limit != 64<<20 || m.Failcnt != 5 || m.Cache != 6291456 || m.Stat["pgfault"] != 1234 {
		t.Errorf("memory %+v", m)
	}
	if m.SwapUsage != 10<<20+4096 || m.SwapLimit != math.MaxUint64 {
		t.Errorf("memory+swap %d of %d", m.SwapUsage, m.SwapLimit)
	}
	if st.Pids != (PidsStats{Current: 3}) {
		t.Errorf("pids %+v", st.Pids)
	}
	if len(st.IO) != 6 || st.IO[0] != (IOEntry{"service_bytes", 254, 0, "Read", 4096}) || st.IO[3] != (IOEntry{"serviced", 254, 0, "Write", 2}) {
		t.Errorf("io %+v", st.IO)
	}
	if len(st.Hugetlb) != 1 || st.Hugetlb["2MB"] != (HugetlbStats{Usage: 2 << 20, Failcnt: 2}) {
		t.Errorf("hugetlb %+v", st.Hugetlb)
	}

	// With a swap limit, v1's memory+swap limit is both.
	write(t, filepath.Join(dir, "memory.swap.max"), "1048576\n")
	if st, err := ReadStats(dir); err != nil || st.Memory.SwapLimit != 65<<20 {
		t.Errorf("memory+swap limit %d, %v", st.Memory.SwapLimit, err)
	}
	// A file the kernel would never write is an error, not a zero.
	write(t, filepath.Join(dir, "memory.current"), "lots\n")
	if _, err := ReadStats(dir); err == nil {
		t.Error("no error for a bad memory.current")
	}
	if _, err := ReadStats(filepath.Join(dir, "gone")); err == nil {
		t.Error("no error for a cgroup that is not there")
	}
}

// TestReadStatsReal reads a real cgroup v2 of this machine's: whatever
// controllers it has, cpu.stat is there and parses.
func TestReadStatsReal(t *testing.T) {
	for _, m := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(m, "cgroup.subtree_control")); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(m, "cpu.stat")); err != nil {
			continue
		}
		st, err := ReadStats(m)
		if err != nil {
			t.Fatal(err)
		}
		if st.CPU.Usage == 0 {
			t.Errorf("%s: no CPU usage: %+v", m, st.CPU)
		}
		return
	}
	t.Skip("no cgroup v2 hierarchy with cpu.stat")
}

func TestParsers(t *testing.T) {
	if got := ParseFlatKeyed([]byte("a 1\nb x\n\nc  2\n d 3\nnokey\n")); len(got) != 2 || got["a"] != 1 || got["c"] != 2 {
		t.Errorf("flat keyed: %v", got)
	}
	if got := ParseIOStat([]byte("8:0 rbytes=1 bogus=2 wios=x\nx:y rbytes=1\n8:16\n")); len(got) != 1 || got[0] != (IOEntry{"service_bytes", 8, 0, "Read", 1}) {
		t.Errorf("io.stat: %+v", got)
	}
	for in, want := range map[string]uint64{"": 0, "max\n": math.MaxUint64, "42\n": 42} {
		if got, err := ParseValue([]byte(in)); err != nil || got != want {
			t.Errorf("ParseValue(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := ParseValue([]byte("-1")); err == nil {
		t.Error("ParseValue(-1): no error")
	}
	if got, err := ParseList("0-2,5"); err != nil || len(got) != 4 || !got[5] {
		t.Errorf("ParseList: %v, %v", got, err)
	}
	for _, bad := range []string{"", "-1", "3-1", "a", "1,,2", "0-9000"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q): no error", bad)
		}
	}
}

func FuzzParseFlatKeyed(f *testing.F) {
	f.Add([]byte(v2Stats["memory.stat"]))
	f.Add([]byte(v2Stats["memory.events"]))
	f.Fuzz(func(t *testing.T, b []byte) { ParseFlatKeyed(b) })
}

func FuzzParseIOStat(f *testing.F) {
	f.Add([]byte(v2Stats["io.stat"]))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range ParseIOStat(b) {
			if e.Op == "" || e.Table == "" {
				t.Fatalf("entry without a table or op: %+v", e)
			}
		}
	})
}

func FuzzParseList(f *testing.F) {
	f.Add("0-3,7")
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParseList(s)
		if err == nil && len(set) > maxListItems {
			t.Fatalf("%d items", len(set))
		}
	})
}

func FuzzParseValue(f *testing.F) {
	f.Add([]byte("max\n"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseValue(b) })
}
