package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// fakeCgroup makes a directory standing in for a container's cgroup v2,
// with files as the kernel has them, and a sysfs beside it.
func fakeCgroup(t *testing.T, files map[string]string) (dir string, h Host) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "cg")
	sys := filepath.Join(root, "sys")
	base := map[string]string{
		"cgroup.procs": "", "cgroup.controllers": "cpuset cpu io memory hugetlb pids",
		"memory.max": "max\n", "memory.low": "0\n", "memory.swap.max": "max\n", "memory.current": "10485760\n",
		"memory.stat": "anon 4194304\nfile 6291456\nshmem 1048576\nslab_reclaimable 524288\n",
		"cpu.weight":  "100\n", "cpu.max": "max 100000\n", "cpuset.cpus": "\n", "cpuset.mems": "\n",
		"pids.max": "max\n", "io.weight": "default 100\n", "io.max": "", "hugetlb.2MB.max": "max\n",
	}
	for k, v := range files {
		if v == "-" {
			delete(base, k)
			continue
		}
		base[k] = v
	}
	for name, content := range base {
		write(t, filepath.Join(dir, name), content)
	}
	write(t, filepath.Join(sys, "devices/system/cpu/online"), "0-1\n")
	write(t, filepath.Join(sys, "devices/system/node/online"), "0\n")
	write(t, filepath.Join(sys, "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"), "0\n")
	write(t, filepath.Join(sys, "dev/block/254:0/dev"), "254:0\n")
	return dir, Host{Sysfs: sys}
}

func write(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConvert(t *testing.T) {
	dir, h := fakeCgroup(t, nil)
	tests := []struct {
		name string
		r    Resources
		want []Write
	}{
		{"memory", Resources{MemoryLimit: 64 << 20, MemoryReservation: 32 << 20, MemorySwap: 96 << 20},
			[]Write{{"memory.swap.max", "33554432"}, {"memory.max", "67108864"}, {"memory.low", "33554432"}}},
		{"no limits", Resources{MemoryLimit: -1, MemorySwap: -1, Pids: -1},
			[]Write{{"memory.swap.max", "max"}, {"memory.max", "max"}, {"pids.max", "max"}}},
		{"swap alone takes the current limit", Resources{MemorySwap: -1}, []Write{{"memory.swap.max", "max"}}},
		// runc's conversions: 1024 shares are weight 100, 2 the least.
		{"shares", Resources{CPUShares: 1024}, []Write{{"cpu.weight", "100"}}},
		{"least shares", Resources{CPUShares: 2}, []Write{{"cpu.weight", "1"}}},
		{"most shares", Resources{CPUShares: 1 << 20}, []Write{{"cpu.weight", "10000"}}},
		{"quota keeps the period", Resources{CPUQuota: 50000}, []Write{{"cpu.max", "50000 100000"}}},
		{"quota and period", Resources{CPUQuota: 20000, CPUPeriod: 40000}, []Write{{"cpu.max", "20000 40000"}}},
		{"no quota", Resources{CPUQuota: -1}, []Write{{"cpu.max", "max 100000"}}},
		{"cpus", Resources{CPUs: "0-1", Mems: "0"}, []Write{{"cpuset.cpus", "0-1"}, {"cpuset.mems", "0"}}},
		{"pids", Resources{Pids: 20}, []Write{{"pids.max", "20"}}},
		{"blkio", Resources{BlkioWeight: 500, BlkioWeightDevices: []WeightDevice{{254, 0, 10}},
			BlkioThrottleReadBps: []ThrottleDevice{{254, 0, 1 << 20}}},
			[]Write{{"io.weight", "default 4950"}, {"io.weight", "254:0 1"}, {"io.max", "254:0 rbps=1048576"}}},
		{"hugetlb", Resources{Hugepages: []HugepageLimit{{"2MB", 4 << 20}}}, []Write{{"hugetlb.2MB.max", "4194304"}}},
		{"nothing", Resources{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.Convert(dir, "resources.", tt.r)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("writes %q, want %q", got, tt.want)
			}
		})
	}
}

// TestConvertRefuses: bad or absurd values are refused as invalid,
// naming the field; what the cgroup lacks as a failed precondition.
func TestConvertRefuses(t *testing.T) {
	dir, h := fakeCgroup(t, nil)
	for _, tt := range []struct {
		r     Resources
		field string
	}{
		{Resources{MemoryLimit: -5}, "resources.Memory.Limit: "},
		{Resources{MemoryLimit: 4096}, "resources.Memory.Limit: "},
		// Holds 10 MiB, of which file pages less shmem and reclaimable
		// slab (4.5 MiB) can go: 5.5 MiB cannot.
		{Resources{MemoryLimit: 5 << 20}, "resources.Memory.Limit: "},
		{Resources{MemoryLimit: 64 << 20, MemorySwap: 32 << 20}, "resources.Memory.Swap: "},
		{Resources{MemoryLimit: 64 << 20, MemoryReservation: 128 << 20}, "resources.Memory.Reservation: "},
		{Resources{MemoryKernel: 1 << 20}, "resources.Memory.Kernel: "},
		{Resources{MemoryKernelTCP: 1 << 20}, "resources.Memory.KernelTCP: "},
		{Resources{Swappiness: 60}, "resources.Memory.Swappiness: "},
		{Resources{DisableOOMKiller: true}, "resources.Memory.DisableOOMKiller: "},
		{Resources{CPUQuota: -2}, "resources.CPU.Quota: "},
		{Resources{CPUQuota: 10}, "resources.CPU.Quota: "},
		{Resources{CPUPeriod: 10}, "resources.CPU.Period: "},
		{Resources{CPUPeriod: 2000000}, "resources.CPU.Period: "},
		{Resources{CPURealtimeRuntime: 1}, "resources.CPU.RealtimeRuntime: "},
		{Resources{CPUs: "0-3"}, "resources.CPU.Cpus: "},
		{Resources{CPUs: "1-0"}, "resources.CPU.Cpus: "},
		{Resources{CPUs: "x"}, "resources.CPU.Cpus: "},
		{Resources{CPUs: "0-99999999"}, "resources.CPU.Cpus: "},
		{Resources{Mems: "1"}, "resources.CPU.Mems: "},
		{Resources{Pids: -2}, "resources.Pids.Limit: "},
		{Resources{Pids: 1 << 40}, "resources.Pids.Limit: "},
		{Resources{BlkioWeight: 5}, "resources.BlockIO.Weight: "},
		{Resources{BlkioLeafWeight: 100}, "resources.BlockIO.LeafWeight: "},
		{Resources{BlkioWeightDevices: []WeightDevice{{8, 0, 100}}}, "resources.BlockIO.WeightDevice[0]: "},
		{Resources{BlkioThrottleWriteIOPS: []ThrottleDevice{{-1, 0, 5}}}, "resources.BlockIO.ThrottleWriteIOPSDevice[0]: "},
		{Resources{Hugepages: []HugepageLimit{{"1GB", 1 << 30}}}, "resources.HugepageLimits[0].Pagesize: "},
		{Resources{Hugepages: []HugepageLimit{{"../../x", 1}}}, "resources.HugepageLimits[0].Pagesize: "},
	} {
		_, err := h.Convert(dir, "resources.", tt.r)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tt.field) {
			t.Errorf("%+v: %v; want invalid %s", tt.r, err, tt.field)
		}
	}

	dir, h = fakeCgroup(t, map[string]string{"cpuset.cpus": "-", "memory.swap.max": "-", "pids.max": "-"})
	for _, r := range []Resources{{CPUs: "0"}, {Pids: 5}, {MemoryLimit: 64 << 20, MemorySwap: 128 << 20}} {
		if _, err := h.Convert(dir, "resources.", r); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%+v without its controller's file: %v", r, err)
		}
	}
	// No swap accounting is no swap: asking for none, or no limit, is fine.
	if ws, err := h.Convert(dir, "resources.", Resources{MemoryLimit: 64 << 20, MemorySwap: 64 << 20}); err != nil || len(ws) != 1 {
		t.Errorf("swap equal to memory without swap accounting: %v, %v", ws, err)
	}
}

// TestApplyUndoes: a write that fails sets the files written before it
// back to what they were.
func TestApplyUndoes(t *testing.T) {
	dir, _ := fakeCgroup(t, nil)
	// A directory where a file should be fails the write.
	if err := os.Mkdir(filepath.Join(dir, "pids.broken"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := Apply(dir, []Write{{"memory.max", "67108864"}, {"cpu.max", "5000 100000"}, {"pids.broken", "5"}})
	if err == nil {
		t.Fatal("no error")
	}
	// The stand-in files keep every write: the last is the restored value.
	for file, want := range map[string]string{"memory.max": "67108864max", "cpu.max": "5000 100000max 100000"} {
		b, _ := os.ReadFile(filepath.Join(dir, file))
		if !strings.HasSuffix(string(b), want) {
			t.Errorf("%s: %q, want it to end %q", file, b, want)
		}
	}
	if err := Apply(dir, []Write{{"pids.max", "7"}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "pids.max")); string(b) != "max\n7" {
		t.Errorf("pids.max %q", b)
	}
}

func TestHugepageSizes(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "other"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := HugepageSizes(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || !got["2MB"] || !got["1GB"] || !got["64KB"] {
		t.Errorf("sizes %v", got)
	}
	if got, err := HugepageSizes(filepath.Join(dir, "none")); err != nil || len(got) != 0 {
		t.Errorf("no huge pages: %v, %v", got, err)
	}
}
