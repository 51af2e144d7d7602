package kata

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"

	pb "github.com/cabinvm/cabin/api/kata"
)

// toKata is convertSpec the other way, written apart from it, field by
// field, for the round trip test: a field convertSpec drops does not come
// back.
func toKata(s *specs.Spec) *pb.Spec {
	out := &pb.Spec{Version: s.Version, Hostname: s.Hostname, Annotations: s.Annotations}
	if p := s.Process; p != nil {
		out.Process = &pb.Process{
			Terminal:        p.Terminal,
			User:            &pb.User{UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids, Username: p.User.Username},
			Args:            p.Args,
			Env:             p.Env,
			Cwd:             p.Cwd,
			NoNewPrivileges: p.NoNewPrivileges,
			ApparmorProfile: p.ApparmorProfile,
			SelinuxLabel:    p.SelinuxLabel,
		}
		if p.ConsoleSize != nil {
			out.Process.ConsoleSize = &pb.Box{Height: uint32(p.ConsoleSize.Height), Width: uint32(p.ConsoleSize.Width)}
		}
		if c := p.Capabilities; c != nil {
			out.Process.Capabilities = &pb.LinuxCapabilities{Bounding: c.Bounding, Effective: c.Effective,
				Inheritable: c.Inheritable, Permitted: c.Permitted, Ambient: c.Ambient}
		}
		for _, r := range p.Rlimits {
			out.Process.Rlimits = append(out.Process.Rlimits, &pb.POSIXRlimit{Type: r.Type, Hard: r.Hard, Soft: r.Soft})
		}
		if p.OOMScoreAdj != nil {
			out.Process.OOMScoreAdj = int64(*p.OOMScoreAdj)
		}
	}
	if s.Root != nil {
		out.Root = &pb.Root{Path: s.Root.Path, Readonly: s.Root.Readonly}
	}
	for _, m := range s.Mounts {
		out.Mounts = append(out.Mounts, &pb.Mount{Destination: m.Destination, Source: m.Source, Type: m.Type, Options: m.Options})
	}
	if h := s.Hooks; h != nil {
		hooks := func(in []specs.Hook) []*pb.Hook {
			var out []*pb.Hook
			for _, h := range in {
				out = append(out, &pb.Hook{Path: h.Path, Args: h.Args, Env: h.Env, Timeout: int64(deref(h.Timeout))})
			}
			return out
		}
		out.Hooks = &pb.Hooks{
			Prestart: hooks(h.Prestart), Poststart: hooks(h.Poststart), Poststop: hooks(h.Poststop),
			CreateRuntime: hooks(h.CreateRuntime), CreateContainer: hooks(h.CreateContainer), StartContainer: hooks(h.StartContainer),
		}
	}
	if l := s.Linux; l != nil {
		out.Linux = linuxToKata(l)
	}
	return out
}

func linuxToKata(l *specs.Linux) *pb.Linux {
	ids := func(in []specs.LinuxIDMapping) []*pb.LinuxIDMapping {
		var out []*pb.LinuxIDMapping
		for _, m := range in {
			out = append(out, &pb.LinuxIDMapping{HostID: m.HostID, ContainerID: m.ContainerID, Size: m.Size})
		}
		return out
	}
	out := &pb.Linux{
		UIDMappings: ids(l.UIDMappings), GIDMappings: ids(l.GIDMappings), Sysctl: l.Sysctl,
		CgroupsPath: l.CgroupsPath, RootfsPropagation: l.RootfsPropagation, MaskedPaths: l.MaskedPaths,
		ReadonlyPaths: l.ReadonlyPaths, MountLabel: l.MountLabel,
	}
	for _, ns := range l.Namespaces {
		out.Namespaces = append(out.Namespaces, &pb.LinuxNamespace{Type: string(ns.Type), Path: ns.Path})
	}
	for _, d := range l.Devices {
		out.Devices = append(out.Devices, &pb.LinuxDevice{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor,
			FileMode: uint32(deref(d.FileMode)), UID: deref(d.UID), GID: deref(d.GID)})
	}
	if r := l.Resources; r != nil {
		out.Resources = resourcesToKata(r)
	}
	sc, err := pb.SeccompFromOCI(l.Seccomp)
	if err != nil {
		panic(err) // the specs converted here hold nothing Kata's message lacks
	}
	out.Seccomp = sc
	if l.IntelRdt != nil {
		out.IntelRdt = &pb.LinuxIntelRdt{L3CacheSchema: l.IntelRdt.L3CacheSchema}
	}
	return out
}

func resourcesToKata(r *specs.LinuxResources) *pb.LinuxResources {
	out := &pb.LinuxResources{}
	for _, d := range r.Devices {
		out.Devices = append(out.Devices, &pb.LinuxDeviceCgroup{Allow: d.Allow, Type: d.Type, Access: d.Access,
			Major: derefOr(d.Major, -1), Minor: derefOr(d.Minor, -1)})
	}
	if m := r.Memory; m != nil {
		out.Memory = &pb.LinuxMemory{Limit: deref(m.Limit), Reservation: deref(m.Reservation), Swap: deref(m.Swap),
			Kernel: deref(m.Kernel), KernelTCP: deref(m.KernelTCP), Swappiness: deref(m.Swappiness),
			DisableOOMKiller: deref(m.DisableOOMKiller)}
	}
	if c := r.CPU; c != nil {
		out.CPU = &pb.LinuxCPU{Shares: deref(c.Shares), Quota: deref(c.Quota), Period: deref(c.Period),
			RealtimeRuntime: deref(c.RealtimeRuntime), RealtimePeriod: deref(c.RealtimePeriod), Cpus: c.Cpus, Mems: c.Mems}
	}
	if r.Pids != nil {
		out.Pids = &pb.LinuxPids{Limit: deref(r.Pids.Limit)}
	}
	if b := r.BlockIO; b != nil {
		throttles := func(in []specs.LinuxThrottleDevice) []*pb.LinuxThrottleDevice {
			var out []*pb.LinuxThrottleDevice
			for _, d := range in {
				out = append(out, &pb.LinuxThrottleDevice{Major: d.Major, Minor: d.Minor, Rate: d.Rate})
			}
			return out
		}
		bio := &pb.LinuxBlockIO{
			Weight: uint32(deref(b.Weight)), LeafWeight: uint32(deref(b.LeafWeight)),
			ThrottleReadBpsDevice: throttles(b.ThrottleReadBpsDevice), ThrottleWriteBpsDevice: throttles(b.ThrottleWriteBpsDevice),
			ThrottleReadIOPSDevice: throttles(b.ThrottleReadIOPSDevice), ThrottleWriteIOPSDevice: throttles(b.ThrottleWriteIOPSDevice),
		}
		for _, d := range b.WeightDevice {
			bio.WeightDevice = append(bio.WeightDevice, &pb.LinuxWeightDevice{Major: d.Major, Minor: d.Minor,
				Weight: uint32(deref(d.Weight)), LeafWeight: uint32(deref(d.LeafWeight))})
		}
		out.BlockIO = bio
	}
	for _, h := range r.HugepageLimits {
		out.HugepageLimits = append(out.HugepageLimits, &pb.LinuxHugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	if n := r.Network; n != nil {
		out.Network = &pb.LinuxNetwork{ClassID: deref(n.ClassID)}
		for _, p := range n.Priorities {
			out.Network.Priorities = append(out.Network.Priorities, &pb.LinuxInterfacePriority{Name: p.Name, Priority: p.Priority})
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	return derefOr(p, zero)
}

func derefOr[T any](p *T, or T) T {
	if p == nil {
		return or
	}
	return *p
}
