package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Tree is cabin's cgroups below a cgroup2 mount.
type Tree struct {
	plan     Plan
	sessions *Sessions
}

// Setup makes cabin's cgroups below mount (Mount in the guest), enables
// the controllers and writes plan's limits. It does what it can: once the
// directories are there it returns the tree, with any failure to enable a
// controller or write a limit in err, since the exec sessions' cgroups
// (cgroup.kill needs no controller) and the containers' parent are worth
// having without them.
func Setup(mount string, plan Plan) (*Tree, error) {
	top := filepath.Join(mount, topName)
	containers := filepath.Join(top, containersName)
	execDir := filepath.Join(top, execName)
	for _, d := range []string{top, containers, execDir} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("cgroup %s: %w", d, err)
		}
	}
	// Top down: a cgroup can share out only what its parent shares with
	// it. The exec sessions get none: they need only cgroup.kill, and a
	// memory cgroup per session would cost the kernel more than the rest
	// of the session does; they are charged to exec, which holds the
	// limits.
	errs := []error{
		enable(mount, controllers),
		enable(top, controllers),
		enable(containers, controllers),
		limit(containers, plan.Containers),
		limit(execDir, plan.Exec),
	}
	return &Tree{plan: plan, sessions: &Sessions{dir: execDir}}, errors.Join(errs...)
}

// Plan is the limits Setup was given.
func (t *Tree) Plan() Plan { return t.plan }

// ContainersPath is the containers' parent as an OCI linux.cgroupsPath
// spells it: a path from the cgroup2 mount.
func (t *Tree) ContainersPath() string { return path.Join("/", topName, containersName) }

// Sessions is the exec sessions' parent.
func (t *Tree) Sessions() *Sessions { return t.sessions }
