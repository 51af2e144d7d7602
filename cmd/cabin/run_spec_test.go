package main

import (
	"slices"
	"strings"
	"testing"
)

// TestContainerSpecTmpfsSized: every tmpfs cabin run asks for has a size,
// so that none may fill half the guest's RAM, as a tmpfs without one may.
func TestContainerSpecTmpfsSized(t *testing.T) {
	spec := containerSpec("c1", "busybox", []string{"true"}, nil, nil, process{})
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
	if n < 3 {
		t.Errorf("%d tmpfs mounts; want /dev, /dev/shm and /tmp", n)
	}
	// Limits are the agent's to give: the spec asks for none.
	if r := spec.GetLinux().GetResources(); r.GetMemory() != nil || r.GetPids() != nil {
		t.Errorf("resources %v; want none of memory or pids", r)
	}
}
