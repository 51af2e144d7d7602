package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Budget is what the VM has to share out.
type Budget struct {
	// Total is the guest's RAM as the kernel counts it (MemTotal).
	Total int64
	// Memory is what processes can have of it: MemAvailable when the agent
	// starts, before anything else runs. That is Total less what the
	// kernel holds and the initramfs's files, which live in memory and
	// cannot be evicted (some 60 MiB of a 512 MiB VM).
	Memory int64
	// Tasks is how many tasks (threads) may exist at once: the lesser of
	// pid_max and threads-max. The kernel sizes threads-max at one task per
	// 128 KiB of RAM, so below 4 GiB it is the lesser (3,417 in a 512 MiB
	// VM, against a pid_max of 32,768), and it is what a fork bomb
	// exhausts: fork fails with EAGAIN for every process in the VM.
	Tasks int64
}

// ReadBudget reads the budget from procfs (/proc in the guest).
func ReadBudget(procfs string) (Budget, error) {
	var b Budget
	mem, err := os.ReadFile(filepath.Join(procfs, "meminfo"))
	if err != nil {
		return b, fmt.Errorf("read memory: %w", err)
	}
	if b.Total, err = meminfo(mem, "MemTotal"); err != nil {
		return b, err
	}
	if b.Memory, err = meminfo(mem, "MemAvailable"); err != nil {
		return b, err
	}
	pidMax, err := readInt(filepath.Join(procfs, "sys/kernel/pid_max"))
	if err != nil {
		return b, err
	}
	threadsMax, err := readInt(filepath.Join(procfs, "sys/kernel/threads-max"))
	if err != nil {
		return b, err
	}
	b.Tasks = min(pidMax, threadsMax)
	return b, nil
}

// meminfo reads the field key of /proc/meminfo, in bytes.
func meminfo(b []byte, key string) (int64, error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo %s: %q is not a size in kB", key, rest)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo %s: %w", key, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("meminfo: no %s", key)
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}

// Limits are a cgroup's memory.max and pids.max; zero is no limit (the
// kernel's "max").
type Limits struct {
	// Memory is in bytes.
	Memory int64
	// Pids counts tasks: processes and their threads.
	Pids int64
}

// Plan is the limits of cabin's two parents.
type Plan struct {
	// Containers keeps the reserve from all the containers together: what
	// the agent needs to serve (its own heap, a run of cabin-runtime,
	// the host's calls) and exec sessions need to get in, whatever the
	// containers do.
	Containers Limits
	// Exec keeps the agent's own share from the exec sessions, so that a
	// fork bomb run with cabin exec still leaves the agent the threads
	// and memory to end it.
	Exec Limits
}

// The reserves, each the larger of a floor and a share of the VM.
//
// The containers' reserve: the agent runs in 9 MiB and lets its heap grow
// to 12 (cmd/cabin-agent), a run of cabin-runtime takes some 8 MiB and
// five threads while it runs, and an exec'd shell a few MiB; the floors
// hold those a few times over, and the eighth grows the reserve with the
// kernel's own tables in a larger VM. A 512 MiB VM keeps 64 MiB and 427
// tasks from its containers.
//
// The agent's own reserve from exec sessions is smaller: the agent and a
// runtime run, no shells.
const (
	reserveMemoryFloor = 64 << 20
	reserveTasksFloor  = 256
	reserveShare       = 8

	agentMemoryFloor = 32 << 20
	agentTasksFloor  = 64
	agentShare       = 32
)

// PlanFor sizes the limits for b. A zero in b (unknown) leaves that limit
// off.
func PlanFor(b Budget) Plan {
	return Plan{
		Containers: Limits{
			Memory: keep(b.Memory, max(reserveMemoryFloor, b.Total/reserveShare)),
			Pids:   keep(b.Tasks, max(reserveTasksFloor, b.Tasks/reserveShare)),
		},
		Exec: Limits{
			Memory: keep(b.Memory, max(agentMemoryFloor, b.Total/agentShare)),
			Pids:   keep(b.Tasks, max(agentTasksFloor, b.Tasks/agentShare)),
		},
	}
}

// keep is what is left of have once reserve is kept from it, but never
// less than half: a VM too small for the reserve still runs something.
func keep(have, reserve int64) int64 {
	if have <= 0 {
		return 0
	}
	return max(have-reserve, have/2)
}
