package container

import (
	"context"
	"fmt"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Update changes the cgroup resources of container id, created, running
// or paused, as runc update does: what res sets replaces the container's
// recorded resources (what it leaves unset stays), libcontainer writes the
// result to the cgroup (putting the old values back if the kernel refuses
// one) and records it in the container's state, so that whatever
// libcontainer does later starts from the limits set now, not from the
// create-time ones. Devices are not changed (runc update cannot either).
func (r *Runtime) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	if res == nil {
		return invalidf("--resources: no resources")
	}
	if len(res.Devices) > 0 {
		return invalidf("--resources: devices: an update cannot change them")
	}
	c, st, err := r.loadStatus(id)
	if err != nil {
		return err
	}
	if st == libcontainer.Stopped {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "container %q: update: it is stopped", id)
	}
	config := c.Config()
	if config.Cgroups == nil || config.Cgroups.Resources == nil {
		return fmt.Errorf("container %q: update: its state records no cgroup", id)
	}
	mergeResources(config.Cgroups.Resources, res)
	// Not saved in the state; keeps Set from rewriting the device rules
	// (an eBPF program on cgroup v2) the container was created with.
	config.Cgroups.SkipDevices = true
	if err := c.Set(config); err != nil {
		return fmt.Errorf("container %q: update: %w", id, err)
	}
	return nil
}

// mergeResources writes what res sets over to.
func mergeResources(to *cgroups.Resources, res *specs.LinuxResources) {
	if m := res.Memory; m != nil {
		setIf(&to.Memory, m.Limit)
		setIf(&to.MemoryReservation, m.Reservation)
		setIf(&to.MemorySwap, m.Swap)
		if m.Swappiness != nil {
			to.MemorySwappiness = m.Swappiness
		}
		if m.CheckBeforeUpdate != nil {
			to.MemoryCheckBeforeUpdate = *m.CheckBeforeUpdate
		}
	}
	if c := res.CPU; c != nil {
		if c.Shares != nil {
			to.CpuShares = *c.Shares
			to.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*c.Shares)
		}
		// One of quota and period alone keeps the other (runc's rule).
		setIf(&to.CpuQuota, c.Quota)
		setIf(&to.CpuPeriod, c.Period)
		if c.Burst != nil {
			to.CpuBurst = c.Burst
		}
		setIf(&to.CpuRtRuntime, c.RealtimeRuntime)
		setIf(&to.CpuRtPeriod, c.RealtimePeriod)
		if c.Cpus != "" {
			to.CpusetCpus = c.Cpus
		}
		if c.Mems != "" {
			to.CpusetMems = c.Mems
		}
		if c.Idle != nil {
			to.CPUIdle = c.Idle
		}
	}
	if p := res.Pids; p != nil && p.Limit != nil {
		to.PidsLimit = p.Limit
	}
	if b := res.BlockIO; b != nil {
		setIf(&to.BlkioWeight, b.Weight)
		setIf(&to.BlkioLeafWeight, b.LeafWeight)
		for _, wd := range b.WeightDevice {
			to.BlkioWeightDevice = upsertWeight(to.BlkioWeightDevice, wd)
		}
		for _, l := range []struct {
			to   *[]*cgroups.ThrottleDevice
			from []specs.LinuxThrottleDevice
		}{
			{&to.BlkioThrottleReadBpsDevice, b.ThrottleReadBpsDevice},
			{&to.BlkioThrottleWriteBpsDevice, b.ThrottleWriteBpsDevice},
			{&to.BlkioThrottleReadIOPSDevice, b.ThrottleReadIOPSDevice},
			{&to.BlkioThrottleWriteIOPSDevice, b.ThrottleWriteIOPSDevice},
		} {
			for _, td := range l.from {
				*l.to = upsertThrottle(*l.to, td)
			}
		}
	}
	for _, h := range res.HugepageLimits {
		found := false
		for _, have := range to.HugetlbLimit {
			if have.Pagesize == h.Pagesize {
				have.Limit, found = h.Limit, true
			}
		}
		if !found {
			to.HugetlbLimit = append(to.HugetlbLimit, &cgroups.HugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
		}
	}
	for k, v := range res.Unified {
		if to.Unified == nil {
			to.Unified = map[string]string{}
		}
		to.Unified[k] = v
	}
}

// setIf sets *to to *v when v is set.
func setIf[T any](to *T, v *T) {
	if v != nil {
		*to = *v
	}
}

func upsertWeight(ds []*cgroups.WeightDevice, wd specs.LinuxWeightDevice) []*cgroups.WeightDevice {
	for _, d := range ds {
		if d.Major == wd.Major && d.Minor == wd.Minor {
			setIf(&d.Weight, wd.Weight)
			setIf(&d.LeafWeight, wd.LeafWeight)
			return ds
		}
	}
	var w, lw uint16
	setIf(&w, wd.Weight)
	setIf(&lw, wd.LeafWeight)
	return append(ds, cgroups.NewWeightDevice(wd.Major, wd.Minor, w, lw))
}

func upsertThrottle(ds []*cgroups.ThrottleDevice, td specs.LinuxThrottleDevice) []*cgroups.ThrottleDevice {
	for _, d := range ds {
		if d.Major == td.Major && d.Minor == td.Minor {
			d.Rate = td.Rate
			return ds
		}
	}
	return append(ds, cgroups.NewThrottleDevice(td.Major, td.Minor, td.Rate))
}

// ReadResources reads an OCI linux.resources document from path.
func ReadResources(path string) (*specs.LinuxResources, error) {
	if path == "" {
		return nil, invalidf("--resources: not set")
	}
	if err := checkPath("--resources", path); err != nil {
		return nil, err
	}
	var res specs.LinuxResources
	if err := readJSON("--resources", path, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
