package kata

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// updateFile is the resources of an update in progress, in the
// container's bundle, for cabin-runtime update --resources.
const updateFile = "update.json"

// runtimeUpdate has cabin-runtime apply r, checked already, to container
// c: libcontainer's Set writes the cgroup and records the new limits in
// the container's state, as runc update does, so that later libcontainer
// operations start from them rather than from the create-time ones.
func (s *Sandbox) runtimeUpdate(c *container, r cgroup.Resources) error {
	b, err := json.Marshal(specResources(r))
	if err != nil {
		return err
	}
	file := filepath.Join(c.bundle, updateFile)
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return fmt.Errorf("container %q: update: %w", c.id, err)
	}
	defer os.Remove(file)
	if _, err := s.rt.run([]string{"update", "--resources", file, c.id}, nil); err != nil {
		return fmt.Errorf("container %q: update: %w", c.id, err)
	}
	return nil
}

// specResources turns r, where zero means "as it is", into an OCI
// linux.resources document that sets only what r sets.
func specResources(r cgroup.Resources) *specs.LinuxResources {
	var out specs.LinuxResources
	mem := &specs.LinuxMemory{Limit: ptrIf(r.MemoryLimit), Reservation: ptrIf(r.MemoryReservation), Swap: ptrIf(r.MemorySwap)}
	if *mem != (specs.LinuxMemory{}) {
		out.Memory = mem
	}
	cpu := &specs.LinuxCPU{Shares: ptrIf(r.CPUShares), Quota: ptrIf(r.CPUQuota), Period: ptrIf(r.CPUPeriod),
		RealtimeRuntime: ptrIf(r.CPURealtimeRuntime), RealtimePeriod: ptrIf(r.CPURealtimePeriod), Cpus: r.CPUs, Mems: r.Mems}
	if *cpu != (specs.LinuxCPU{}) {
		out.CPU = cpu
	}
	if r.Pids != 0 {
		out.Pids = &specs.LinuxPids{Limit: &r.Pids}
	}
	bio := &specs.LinuxBlockIO{Weight: ptrIf(uint16(r.BlkioWeight)), LeafWeight: ptrIf(uint16(r.BlkioLeafWeight))}
	for _, d := range r.BlkioWeightDevices {
		wd := specs.LinuxWeightDevice{Weight: ptrIf(uint16(d.Weight))}
		wd.Major, wd.Minor = d.Major, d.Minor
		bio.WeightDevice = append(bio.WeightDevice, wd)
	}
	for _, l := range []struct {
		to   *[]specs.LinuxThrottleDevice
		from []cgroup.ThrottleDevice
	}{
		{&bio.ThrottleReadBpsDevice, r.BlkioThrottleReadBps},
		{&bio.ThrottleWriteBpsDevice, r.BlkioThrottleWriteBps},
		{&bio.ThrottleReadIOPSDevice, r.BlkioThrottleReadIOPS},
		{&bio.ThrottleWriteIOPSDevice, r.BlkioThrottleWriteIOPS},
	} {
		for _, d := range l.from {
			td := specs.LinuxThrottleDevice{Rate: d.Rate}
			td.Major, td.Minor = d.Major, d.Minor
			*l.to = append(*l.to, td)
		}
	}
	if bio.Weight != nil || bio.LeafWeight != nil || len(bio.WeightDevice)+len(bio.ThrottleReadBpsDevice)+len(bio.ThrottleWriteBpsDevice)+
		len(bio.ThrottleReadIOPSDevice)+len(bio.ThrottleWriteIOPSDevice) > 0 {
		out.BlockIO = bio
	}
	for _, h := range r.Hugepages {
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	return &out
}

// ptrIf points at v, or is nil for zero.
func ptrIf[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}
