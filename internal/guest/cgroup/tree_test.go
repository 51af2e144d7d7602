package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMount is a directory standing in for a cgroup2 mount after Setup's
// mkdirs: the files it writes exist and keep what is written.
func fakeMount(t *testing.T, missing ...string) string {
	t.Helper()
	mount := t.TempDir()
	files := []string{
		"cgroup.subtree_control",
		"cabin/cgroup.subtree_control",
		"cabin/containers/cgroup.subtree_control", "cabin/containers/memory.max", "cabin/containers/pids.max",
		"cabin/exec/cgroup.subtree_control", "cabin/exec/memory.max", "cabin/exec/pids.max",
		"cabin/exec/cgroup.procs",
	}
	for _, f := range files {
		p := filepath.Join(mount, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if contains(missing, f) {
			continue
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return mount
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func readFake(t *testing.T, mount, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mount, name))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

func TestSetup(t *testing.T) {
	mount := fakeMount(t)
	plan := Plan{Containers: Limits{Memory: 300 * mib, Pids: 3000}, Exec: Limits{Memory: 350 * mib, Pids: 3300}}
	tree, err := Setup(mount, plan)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		// The controllers go down to the containers' own cgroups, and not
		// to the exec sessions', which need none.
		"cgroup.subtree_control":                  "+cpu+memory+pids",
		"cabin/cgroup.subtree_control":            "+cpu+memory+pids",
		"cabin/containers/cgroup.subtree_control": "+cpu+memory+pids",
		"cabin/exec/cgroup.subtree_control":       "",
		"cabin/containers/memory.max":             "314572800",
		"cabin/containers/pids.max":               "3000",
		"cabin/exec/memory.max":                   "367001600",
		"cabin/exec/pids.max":                     "3300",
	}
	for f, w := range want {
		if got := readFake(t, mount, f); got != w {
			t.Errorf("%s: %q, want %q", f, got, w)
		}
	}
	if got := tree.ContainersPath(); got != "/cabin/containers" {
		t.Errorf("ContainersPath %q", got)
	}
	if got := tree.Sessions().Dir(); got != filepath.Join(mount, "cabin/exec") {
		t.Errorf("sessions' parent %q", got)
	}
	if tree.Plan() != plan {
		t.Errorf("Plan %+v", tree.Plan())
	}

	// Again, as an agent that is not the first on this tree would: the
	// directories are there already.
	if _, err := Setup(mount, plan); err != nil {
		t.Errorf("second Setup: %v", err)
	}
}

// TestSetupDoesWhatItCan: a controller the kernel lacks (its files
// missing) is an error, but the tree is still made and limited where it
// can be.
func TestSetupDoesWhatItCan(t *testing.T) {
	mount := fakeMount(t, "cabin/containers/pids.max")
	tree, err := Setup(mount, Plan{Containers: Limits{Memory: mib, Pids: 10}})
	if err == nil || !strings.Contains(err.Error(), "pids.max") {
		t.Errorf("Setup: %v; want the missing pids.max named", err)
	}
	if tree == nil {
		t.Fatal("no tree")
	}
	if got := readFake(t, mount, "cabin/containers/memory.max"); got != "1048576" {
		t.Errorf("memory.max %q", got)
	}
	// Zero limits are not written: the kernel's "max" stays.
	if got := readFake(t, mount, "cabin/exec/memory.max"); got != "" {
		t.Errorf("exec's memory.max %q with no limit planned", got)
	}

	if _, err := Setup(filepath.Join(t.TempDir(), "absent"), Plan{}); err == nil {
		t.Error("Setup with no mount: no error")
	}
}
