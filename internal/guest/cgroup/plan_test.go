package cgroup

import (
	"os"
	"path/filepath"
	"testing"
)

const mib = 1 << 20

func TestPlanFor(t *testing.T) {
	tests := []struct {
		name string
		b    Budget
		want Plan
	}{{
		// The default VM, as its guest reports it at boot.
		name: "512 MiB",
		b:    Budget{Total: 458 * mib, Memory: 399 * mib, Tasks: 3417},
		want: Plan{
			Containers: Limits{Memory: (399 - 64) * mib, Pids: 3417 - 427},
			Exec:       Limits{Memory: (399 - 32) * mib, Pids: 3417 - 106},
		},
	}, {
		// The shares pass the floors.
		name: "8 GiB",
		b:    Budget{Total: 8000 * mib, Memory: 7900 * mib, Tasks: 32768},
		want: Plan{
			Containers: Limits{Memory: 6900 * mib, Pids: 32768 - 4096},
			Exec:       Limits{Memory: 7650 * mib, Pids: 32768 - 1024},
		},
	}, {
		// Too small for the reserve: half of it still goes.
		name: "tiny",
		b:    Budget{Total: 60 * mib, Memory: 40 * mib, Tasks: 400},
		want: Plan{
			Containers: Limits{Memory: 20 * mib, Pids: 200},
			Exec:       Limits{Memory: 20 * mib, Pids: 400 - 64},
		},
	}, {
		name: "unknown",
		b:    Budget{},
		want: Plan{},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PlanFor(tt.b)
			if got != tt.want {
				t.Errorf("PlanFor(%+v) =\n %+v, want\n %+v", tt.b, got, tt.want)
			}
			// The point of it all: below the VM's, and the agent keeps more
			// from the exec sessions than nothing.
			if tt.b.Memory > 0 && (got.Containers.Memory >= tt.b.Memory || got.Exec.Memory >= tt.b.Memory || got.Containers.Pids >= tt.b.Tasks || got.Exec.Pids >= tt.b.Tasks) {
				t.Errorf("a limit is not below the VM's: %+v", got)
			}
		})
	}
}

func TestReadBudget(t *testing.T) {
	procfs := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(procfs, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("meminfo", "MemTotal:         468548 kB\nMemFree:          399180 kB\nMemAvailable:     399248 kB\nBuffers:               0 kB\n")
	write("sys/kernel/pid_max", "32768\n")
	write("sys/kernel/threads-max", "3417\n")
	b, err := ReadBudget(procfs)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Budget{Total: 468548 << 10, Memory: 399248 << 10, Tasks: 3417}); b != want {
		t.Errorf("budget %+v, want %+v", b, want)
	}

	write("sys/kernel/pid_max", "1000\n")
	if b, err := ReadBudget(procfs); err != nil || b.Tasks != 1000 {
		t.Errorf("with pid_max below threads-max: %+v, %v", b, err)
	}
	write("meminfo", "MemTotal:         468548 kB\n")
	if _, err := ReadBudget(procfs); err == nil {
		t.Error("no error without MemAvailable")
	}
	write("meminfo", "MemTotal:         468548 MB\nMemAvailable: 1 kB\n")
	if _, err := ReadBudget(procfs); err == nil {
		t.Error("no error for a size not in kB")
	}

	// This machine's own, which must parse.
	if b, err := ReadBudget("/proc"); err != nil || b.Total <= 0 || b.Memory <= 0 || b.Tasks <= 0 {
		t.Errorf("ReadBudget(/proc) = %+v, %v", b, err)
	}
}
