package kata

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// runtimeCgroupParent is where cabin-runtime puts a container whose spec
// names no cgroup (internal/container's cgroupParent).
const runtimeCgroupParent = "/cabin/containers"

// cgroups is where the containers' cgroups are, for stats, updates and
// OOM events: recorded when a container is created, forgotten when it is
// removed.
type cgroups struct {
	// mount is the cgroup2 mount; empty means cgroup.Mount. host is what
	// updates are checked against. Tests set both.
	mount string
	host  cgroup.Host

	mu   sync.Mutex
	dirs map[string]string // by container id

	oom oomEvents
}

// cgroupDir is the directory of the cgroup spec puts container id in.
func (g *cgroups) cgroupDir(id string, spec *specs.Spec) string {
	p := ""
	if spec.Linux != nil {
		p = spec.Linux.CgroupsPath
	}
	if p == "" {
		p = path.Join(runtimeCgroupParent, id)
	}
	mount := g.mount
	if mount == "" {
		mount = cgroup.Mount
	}
	// The runtime refuses a relative path; Clean keeps ".." at the mount.
	return filepath.Join(mount, path.Clean("/"+p))
}

// created records the cgroup of container id, just created from spec,
// and starts watching it for OOM kills.
func (s *Sandbox) cgroupCreated(id string, spec *specs.Spec) {
	g := &s.cg
	dir := g.cgroupDir(id, spec)
	g.mu.Lock()
	if g.dirs == nil {
		g.dirs = map[string]string{}
	}
	g.dirs[id] = dir
	g.mu.Unlock()
	if err := g.oom.watch(s, id, dir); err != nil {
		// The container runs all the same; its OOM kills go unreported.
		s.log.Warn("no OOM events for container", "id", id, "cgroup", dir, "err", err)
	}
}

// cgroupRemoved forgets container id's cgroup.
func (s *Sandbox) cgroupRemoved(id string) {
	g := &s.cg
	g.mu.Lock()
	delete(g.dirs, id)
	g.mu.Unlock()
	g.oom.unwatch(id)
}

// cgroup finds a container and its cgroup directory.
func (s *Sandbox) cgroup(id string) (*container, string, error) {
	if err := checkID("container_id", id); err != nil {
		return nil, "", err
	}
	c, err := s.container(id)
	if err != nil {
		return nil, "", err
	}
	dir, err := s.cg.dir(id)
	return c, dir, err
}

func (g *cgroups) dir(id string) (string, error) {
	g.mu.Lock()
	dir := g.dirs[id]
	g.mu.Unlock()
	if dir == "" {
		return "", fmt.Errorf("container %q: no cgroup recorded: %w", id, errdefs.ErrNotFound)
	}
	return dir, nil
}

// checkV2 tells whether dir is a cgroup v2 directory, which is all the
// agent reads and writes (the guest mounts nothing else).
func checkV2(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err != nil {
		return fmt.Errorf("container cgroup %s: not cgroup v2 (%w): %w", dir, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Update applies r to the running container's cgroup, live, and to its
// runtime state, through cabin-runtime update. Everything is checked
// before anything is written; a write the kernel refuses sets the ones
// before it back (libcontainer's Set).
func (s *Sandbox) Update(ctx context.Context, id string, r cgroup.Resources) error {
	c, err := s.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	s.mu.Lock()
	err = c.status()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	dir, err := s.cg.dir(id)
	if err != nil {
		return err
	}
	if err := checkV2(dir); err != nil {
		return err
	}
	// Checked here, field by field, against what the guest has; written
	// by the runtime, which records it in the container's state (update.go).
	writes, err := s.cg.host.Convert(dir, "resources.", r)
	if err != nil {
		return err
	}
	if err := s.runtimeUpdate(c, r); err != nil {
		return err
	}
	s.log.Info("container updated", "id", id, "writes", len(writes))
	return nil
}

// ContainerStats are a container's cgroup stats and its network
// namespace's interface counters.
type ContainerStats struct {
	Cgroup  cgroup.Stats
	Network []NetDev
}

// Stats reads the container's cgroup stats and, while its init runs, the
// counters of the network interfaces in its namespace.
func (s *Sandbox) Stats(ctx context.Context, id string) (ContainerStats, error) {
	var st ContainerStats
	c, dir, err := s.cgroup(id)
	if err != nil {
		return st, err
	}
	if err := checkV2(dir); err != nil {
		return st, err
	}
	st.Cgroup, err = cgroup.ReadStats(dir)
	if err != nil {
		return st, fmt.Errorf("container %q: stats: %w", id, err)
	}
	s.mu.Lock()
	init := c.init
	s.mu.Unlock()
	if init != nil {
		// Under the guard: the pid is the init's while it is read.
		err = init.guard.Do(func() error {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(init.pid) + "/net/dev")
			if err != nil {
				return err
			}
			st.Network = ParseNetDev(b)
			return nil
		})
		if err != nil {
			s.log.Debug("container network stats", "id", id, "err", err)
		}
	}
	return st, nil
}
