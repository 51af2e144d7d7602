package main

import (
	"slices"
	"strings"
	"testing"
)

// TestContainerSpecTmpfsSized: every tmpfs cabin run asks for has a size,
// so that none may fill half the guest's RAM, as a tmpfs without one may,
// and so has the tmpfs of the container's writable layer.
func TestContainerSpecTmpfsSized(t *testing.T) {
	spec := containerSpec(specInput{id: "c1", proc: processPlan{argv: []string{"true"}, cwd: "/"}})
	n := 0
	for _, m := range spec.GetMounts() {
		if m.GetType() != "tmpfs" {
			continue
		}
		n++
		if !slices.ContainsFunc(m.GetOptions(), func(o string) bool { return strings.HasPrefix(o, "size=") }) {
			t.Errorf("tmpfs on %s has no size: %q", m.GetDestination(), m.GetOptions())
		}
	}
	if n < 2 {
		t.Errorf("%d tmpfs mounts; want /dev and /dev/shm", n)
	}
	// Limits are the agent's to give unless asked: the spec asks for none.
	if r := spec.GetLinux().GetResources(); r.GetMemory() != nil || r.GetPids() != nil || r.GetCPU() != nil {
		t.Errorf("resources %v; want none of memory, cpu or pids", r)
	}
	for _, mem := range []int64{0, 64 << 20} {
		st := containerStorages(runImage{digest: "sha256:" + strings.Repeat("a", 64)}, "c1", mem)
		want := map[int64]string{0: "size=25%", 64 << 20: "size=32768k"}[mem]
		if st[1].GetDriver() != "ephemeral" || !slices.Contains(st[1].GetOptions(), want) {
			t.Errorf("memory %d: writable layer %v; want %s", mem, st[1], want)
		}
	}
}

// TestContainerSpecLimits: --memory and --cpus become the container's
// cgroup limits.
func TestContainerSpecLimits(t *testing.T) {
	spec := containerSpec(specInput{id: "c1", proc: processPlan{argv: []string{"true"}, cwd: "/"}, memory: 64 << 20, cpus: 1.5})
	r := spec.GetLinux().GetResources()
	if r.GetMemory().GetLimit() != 64<<20 || r.GetCPU().GetQuota() != 150000 || r.GetCPU().GetPeriod() != 100000 {
		t.Errorf("resources %v", r)
	}
}
