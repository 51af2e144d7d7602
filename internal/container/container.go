// Package container is cabin-runtime's domain: it creates and manages OCI
// containers in the guest on runc's libcontainer, one operation per call,
// as docs/containers.md describes (the agent ↔ runtime contract). It keeps
// no state of its own: libcontainer's state directory under the root is the
// only record of a container between calls.
//
// Every argument is checked before it is used, and before anything is
// created: a container id becomes a directory under the root, and the
// paths name files the runtime reads or writes as root.
package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	// The device rules of a spec (linux.resources.devices, and the
	// defaults libcontainer adds) are applied by this package, which
	// registers itself with the cgroup managers: on cgroup v2, an eBPF
	// program. Without it every container fails to start.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
)

// On-disk names and defaults.
const (
	// DefaultRoot is where libcontainer keeps its state, one directory per
	// container id.
	DefaultRoot = "/run/cabin/runtime"
	// specFile is the OCI runtime spec's name in a bundle.
	specFile = "config.json"
	// cgroupParent holds the cgroup of a container whose spec names none:
	// /cabin/containers/ID, below the limits the guest agent sets there
	// (internal/guest/cgroup), which also puts every container it runs
	// below this.
	cgroupParent = "/cabin/containers"
)

// Runtime runs container operations against one libcontainer root.
type Runtime struct {
	root string
}

// New returns a Runtime keeping its state under root, an absolute, clean
// path. The directory need not exist yet: create makes it.
func New(root string) (*Runtime, error) {
	if err := checkPath("--root", root); err != nil {
		return nil, err
	}
	return &Runtime{root: root}, nil
}

// load returns the container id, or an error in the errdefs.ErrNotFound category.
func (r *Runtime) load(id string) (*libcontainer.Container, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	c, err := libcontainer.Load(r.root, id)
	if errors.Is(err, libcontainer.ErrNotExist) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("container %q: load: %w", id, err)
	}
	return c, nil
}

// loadStatus loads container id and reads its status.
func (r *Runtime) loadStatus(id string) (*libcontainer.Container, libcontainer.Status, error) {
	c, err := r.load(id)
	if err != nil {
		return nil, 0, err
	}
	st, err := c.Status()
	if err != nil {
		return nil, 0, fmt.Errorf("container %q: status: %w", id, err)
	}
	return c, st, nil
}

// exists tells whether id has a state directory under the root, complete
// or not: a directory left by a create that died still takes the id.
func (r *Runtime) exists(id string) (bool, error) {
	_, err := os.Lstat(r.stateDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// stateDir is libcontainer's directory for id. id must have passed
// checkID, which rules out separators and dot names.
func (r *Runtime) stateDir(id string) string {
	return filepath.Join(r.root, id)
}
