package kata

import (
	"fmt"
	"path"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Bounds are what the agent keeps every container within, so that
// whatever the containers do it keeps the memory and tasks it needs to
// serve (docs/containers.md, "What a container may take"). A spec that
// sets its own limits keeps them, within these.
type Bounds struct {
	// CgroupParent is the cgroup all containers' cgroups go below, as an
	// OCI linux.cgroupsPath spells it (from the cgroup2 mount). A spec's
	// own cgroupsPath is taken as a path below it; none puts the
	// container at CgroupParent/ID.
	CgroupParent string
	// Memory (bytes) and Pids are CgroupParent's limits; zero for none. A
	// container that sets no limit, or one above them, gets them: the
	// kernel would hold it to them anyway, and this way the container
	// reads in its cgroup (memory.max, pids.max) what it can have.
	Memory, Pids int64
	// MinOOMScoreAdj is the least oom_score_adj a container's processes
	// get: above the agent's own, which exec sessions and the runtime
	// inherit, so that the OOM killer takes a container's process first.
	MinOOMScoreAdj int
}

// tmpfsShare is the part of a container's memory limit a tmpfs it mounts
// without a size may fill: half, as the kernel gives a tmpfs half of RAM,
// with the container's memory for RAM. Its pages are the container's
// memory; a full tmpfs then fails a write with ENOSPC before the container
// runs out and the OOM killer ends one of its processes.
const tmpfsShare = 2

// apply bounds spec, container id's: its cgroup below CgroupParent, its
// limits within Memory and Pids, a size for every tmpfs it mounts without
// one, and its process's oom_score_adj.
func (b *Bounds) apply(id string, spec *specs.Spec) error {
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	cg, err := b.cgroupsPath(id, spec.Linux.CgroupsPath)
	if err != nil {
		return err
	}
	spec.Linux.CgroupsPath = cg
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	r := spec.Linux.Resources
	if b.Memory > 0 {
		if r.Memory == nil {
			r.Memory = &specs.LinuxMemory{}
		}
		// Zero is no limit in runtime-spec's terms too, and -1 asks for
		// none.
		if l := r.Memory.Limit; l == nil || *l <= 0 || *l > b.Memory {
			r.Memory.Limit = ptr(b.Memory)
		}
		// memory+swap below the memory limit is refused by the runtime;
		// the guest has no swap, so raising it changes nothing else.
		if s := r.Memory.Swap; s != nil && *s > 0 && *s < *r.Memory.Limit {
			r.Memory.Swap = ptr(*r.Memory.Limit)
		}
	}
	if b.Pids > 0 {
		if r.Pids == nil {
			r.Pids = &specs.LinuxPids{}
		}
		if l := r.Pids.Limit; l == nil || *l <= 0 || *l > b.Pids {
			r.Pids.Limit = ptr(b.Pids)
		}
	}
	if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		sizeTmpfs(spec.Mounts, *r.Memory.Limit/tmpfsShare)
	}
	b.process(spec.Process)
	return nil
}

// process raises p's oom_score_adj to MinOOMScoreAdj. An unset one would
// be inherited from cabin-runtime, which has the agent's: it is set.
func (b *Bounds) process(p *specs.Process) {
	if p == nil {
		return
	}
	if p.OOMScoreAdj == nil {
		p.OOMScoreAdj = ptr(max(0, b.MinOOMScoreAdj))
	} else if *p.OOMScoreAdj < b.MinOOMScoreAdj {
		p.OOMScoreAdj = ptr(b.MinOOMScoreAdj)
	}
}

// cgroupsPath is the cgroup of container id whose spec asks for p.
func (b *Bounds) cgroupsPath(id, p string) (string, error) {
	const field = "OCI.Linux.CgroupsPath"
	if p == "" {
		return path.Join(b.CgroupParent, id), nil
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q contains a NUL byte", p))
	}
	// slice:prefix:name is systemd's form, which a Kata runtime using
	// systemd's cgroup driver sends. The guest has no systemd; Kata's
	// agent then takes it as a path, and so does cabin's.
	if !strings.Contains(p, "/") && strings.Count(p, ":") == 2 {
		p = strings.ReplaceAll(p, ":", "/")
	}
	// Rooted at the parent, relative or not; ".." cannot climb out.
	rel := path.Clean("/" + p)
	if rel == "/" {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q names the containers' parent cgroup itself; give each container one of its own", p))
	}
	return path.Join(b.CgroupParent, rel), nil
}

// sizeTmpfs gives each tmpfs in mounts that has no size (nor nr_blocks,
// its other spelling) size bytes, rounded down to KiB.
func sizeTmpfs(mounts []specs.Mount, size int64) {
	kib := size >> 10
	if kib == 0 {
		return // size=0 is no limit at all to tmpfs
	}
	for i, m := range mounts {
		if m.Type != "tmpfs" || slices.ContainsFunc(m.Options, func(o string) bool {
			return strings.HasPrefix(o, "size=") || strings.HasPrefix(o, "nr_blocks=")
		}) {
			continue
		}
		mounts[i].Options = append(slices.Clone(m.Options), fmt.Sprintf("size=%dk", kib))
	}
}
