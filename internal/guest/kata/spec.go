package kata

import (
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// This file turns Kata's copy of the OCI spec (oci.proto) into the
// runtime-spec types cabin-runtime reads, field by field. It checks what
// the agent itself relies on (the process, the root, paths it would
// otherwise pass on blindly) and leaves the rest to the runtime, which
// answers a bad spec with its "invalid" exit code.
//
// proto3 cannot tell an unset number from zero, where runtime-spec has
// pointers. A zero is taken as unset where zero is not a meaningful value
// to set (limits, weights, periods: the kernel's defaults stand); device
// numbers below zero are wildcards, as runtime-spec's absent ones.

// convertSpec converts a container's spec; field is its name in errors.
func convertSpec(field string, s *pb.Spec) (*specs.Spec, error) {
	if s == nil {
		return nil, errdefs.InvalidArgument(field, "must be set")
	}
	out := &specs.Spec{
		Version:     s.GetVersion(),
		Hostname:    s.GetHostname(),
		Annotations: maps.Clone(s.GetAnnotations()),
	}
	if out.Version == "" {
		out.Version = specs.Version
	}
	if s.GetProcess() == nil {
		return nil, errdefs.InvalidArgument(field+".Process", "must be set")
	}
	p, err := convertProcess(field+".Process", s.GetProcess())
	if err != nil {
		return nil, err
	}
	out.Process = p
	root := s.GetRoot()
	if err := checkAbsClean(field+".Root.Path", root.GetPath()); err != nil {
		return nil, err
	}
	out.Root = &specs.Root{Path: root.GetPath(), Readonly: root.GetReadonly()}
	for i, m := range s.GetMounts() {
		f := fmt.Sprintf("%s.Mounts[%d]", field, i)
		if err := checkAbs(f+".destination", m.GetDestination()); err != nil {
			return nil, err
		}
		if err := checkNoNUL(f+".source", m.GetSource()); err != nil {
			return nil, err
		}
		out.Mounts = append(out.Mounts, specs.Mount{
			Destination: m.GetDestination(),
			Type:        m.GetType(),
			Source:      m.GetSource(),
			Options:     slices.Clone(m.GetOptions()),
		})
	}
	if err := checkSpecMounts(field+".Mounts", out.Mounts); err != nil {
		return nil, err
	}
	if h := s.GetHooks(); h != nil {
		if out.Hooks, err = convertHooks(field+".Hooks", h); err != nil {
			return nil, err
		}
	}
	if l := s.GetLinux(); l != nil {
		if out.Linux, err = convertLinux(field+".Linux", l); err != nil {
			return nil, err
		}
	}
	// Solaris and Windows are placeholders in Kata's proto, with nothing
	// for a Linux guest.
	return out, nil
}

// convertProcess converts a process: the container's, or one to exec.
func convertProcess(field string, p *pb.Process) (*specs.Process, error) {
	if len(p.GetArgs()) == 0 || p.GetArgs()[0] == "" {
		return nil, errdefs.InvalidArgument(field+".Args", "must not be empty")
	}
	for _, a := range p.GetArgs() {
		if err := checkNoNUL(field+".Args", a); err != nil {
			return nil, err
		}
	}
	for _, e := range p.GetEnv() {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return nil, errdefs.InvalidArgument(field+".Env", fmt.Sprintf("%q is not KEY=value", e))
		}
	}
	cwd := p.GetCwd()
	if cwd == "" {
		cwd = "/"
	}
	if err := checkAbs(field+".Cwd", cwd); err != nil {
		return nil, err
	}
	adj := p.GetOOMScoreAdj()
	if adj < -1000 || adj > 1000 {
		return nil, errdefs.InvalidArgument(field+".OOMScoreAdj", fmt.Sprintf("%d is outside [-1000, 1000]", adj))
	}
	// Set even when zero, as upstream does: the container must not
	// inherit the agent's own score.
	oom := int(adj)
	out := &specs.Process{
		Terminal:        p.GetTerminal(),
		Args:            slices.Clone(p.GetArgs()),
		Env:             slices.Clone(p.GetEnv()),
		Cwd:             cwd,
		NoNewPrivileges: p.GetNoNewPrivileges(),
		ApparmorProfile: p.GetApparmorProfile(),
		OOMScoreAdj:     &oom,
		SelinuxLabel:    p.GetSelinuxLabel(),
	}
	if b := p.GetConsoleSize(); b != nil {
		out.ConsoleSize = &specs.Box{Height: uint(b.GetHeight()), Width: uint(b.GetWidth())}
	}
	if u := p.GetUser(); u != nil {
		out.User = specs.User{
			UID:            u.GetUID(),
			GID:            u.GetGID(),
			AdditionalGids: slices.Clone(u.GetAdditionalGids()),
			Username:       u.GetUsername(),
		}
	}
	if c := p.GetCapabilities(); c != nil {
		out.Capabilities = &specs.LinuxCapabilities{
			Bounding:    slices.Clone(c.GetBounding()),
			Effective:   slices.Clone(c.GetEffective()),
			Inheritable: slices.Clone(c.GetInheritable()),
			Permitted:   slices.Clone(c.GetPermitted()),
			Ambient:     slices.Clone(c.GetAmbient()),
		}
	}
	for _, r := range p.GetRlimits() {
		out.Rlimits = append(out.Rlimits, specs.POSIXRlimit{Type: r.GetType(), Hard: r.GetHard(), Soft: r.GetSoft()})
	}
	if err := checkRlimits(field+".Rlimits", out.Rlimits); err != nil {
		return nil, err
	}
	if err := checkCapabilities(field+".Capabilities", out.Capabilities); err != nil {
		return nil, err
	}
	return out, nil
}

func convertHooks(field string, h *pb.Hooks) (*specs.Hooks, error) {
	out := &specs.Hooks{}
	for _, kind := range []struct {
		name string
		in   []*pb.Hook
		out  *[]specs.Hook
	}{
		{"Prestart", h.GetPrestart(), &out.Prestart},
		{"CreateRuntime", h.GetCreateRuntime(), &out.CreateRuntime},
		{"CreateContainer", h.GetCreateContainer(), &out.CreateContainer},
		{"StartContainer", h.GetStartContainer(), &out.StartContainer},
		{"Poststart", h.GetPoststart(), &out.Poststart},
		{"Poststop", h.GetPoststop(), &out.Poststop},
	} {
		for i, hk := range kind.in {
			f := fmt.Sprintf("%s.%s[%d]", field, kind.name, i)
			if err := checkAbs(f+".Path", hk.GetPath()); err != nil {
				return nil, err
			}
			if hk.GetTimeout() < 0 || hk.GetTimeout() > math.MaxInt32 {
				return nil, errdefs.InvalidArgument(f+".Timeout", fmt.Sprintf("%d seconds is out of range", hk.GetTimeout()))
			}
			*kind.out = append(*kind.out, specs.Hook{
				Path:    hk.GetPath(),
				Args:    slices.Clone(hk.GetArgs()),
				Env:     slices.Clone(hk.GetEnv()),
				Timeout: nonZero(int(hk.GetTimeout())),
			})
		}
	}
	return out, nil
}

// namespaceTypes are the namespaces runtime-spec knows.
var namespaceTypes = []specs.LinuxNamespaceType{
	specs.PIDNamespace, specs.NetworkNamespace, specs.MountNamespace, specs.IPCNamespace,
	specs.UTSNamespace, specs.UserNamespace, specs.CgroupNamespace, specs.TimeNamespace,
}

func convertLinux(field string, l *pb.Linux) (*specs.Linux, error) {
	out := &specs.Linux{
		UIDMappings:       idMappings(l.GetUIDMappings()),
		GIDMappings:       idMappings(l.GetGIDMappings()),
		Sysctl:            maps.Clone(l.GetSysctl()),
		CgroupsPath:       l.GetCgroupsPath(),
		RootfsPropagation: l.GetRootfsPropagation(),
		MaskedPaths:       slices.Clone(l.GetMaskedPaths()),
		ReadonlyPaths:     slices.Clone(l.GetReadonlyPaths()),
		MountLabel:        l.GetMountLabel(),
	}
	for i, ns := range l.GetNamespaces() {
		f := fmt.Sprintf("%s.Namespaces[%d]", field, i)
		t := specs.LinuxNamespaceType(ns.GetType())
		if !slices.Contains(namespaceTypes, t) {
			return nil, errdefs.InvalidArgument(f+".Type", fmt.Sprintf("%q is not a namespace type", ns.GetType()))
		}
		if ns.GetPath() != "" {
			if err := checkAbs(f+".Path", ns.GetPath()); err != nil {
				return nil, err
			}
		}
		out.Namespaces = append(out.Namespaces, specs.LinuxNamespace{Type: t, Path: ns.GetPath()})
	}
	for i, d := range l.GetDevices() {
		f := fmt.Sprintf("%s.Devices[%d]", field, i)
		if err := checkAbs(f+".Path", d.GetPath()); err != nil {
			return nil, err
		}
		if !slices.Contains([]string{"c", "b", "u", "p"}, d.GetType()) {
			return nil, errdefs.InvalidArgument(f+".Type", fmt.Sprintf("%q is not a device type (c, b, u, p)", d.GetType()))
		}
		dev := specs.LinuxDevice{
			Path:  d.GetPath(),
			Type:  d.GetType(),
			Major: d.GetMajor(),
			Minor: d.GetMinor(),
			// Owner 0 is root, the runtime's default anyway.
			UID: ptr(d.GetUID()),
			GID: ptr(d.GetGID()),
		}
		if d.GetFileMode() != 0 {
			dev.FileMode = ptr(os.FileMode(d.GetFileMode()))
		}
		out.Devices = append(out.Devices, dev)
	}
	if r := l.GetResources(); r != nil {
		res, err := convertResources(field+".Resources", r)
		if err != nil {
			return nil, err
		}
		out.Resources = res
	}
	if s := l.GetSeccomp(); s != nil {
		out.Seccomp = convertSeccomp(s)
	}
	if rdt := l.GetIntelRdt(); rdt != nil {
		out.IntelRdt = &specs.LinuxIntelRdt{L3CacheSchema: rdt.GetL3CacheSchema()}
	}
	return out, nil
}

func idMappings(in []*pb.LinuxIDMapping) []specs.LinuxIDMapping {
	var out []specs.LinuxIDMapping
	for _, m := range in {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.GetContainerID(), HostID: m.GetHostID(), Size: m.GetSize()})
	}
	return out
}

func convertResources(field string, r *pb.LinuxResources) (*specs.LinuxResources, error) {
	out := &specs.LinuxResources{}
	for _, d := range r.GetDevices() {
		rule := specs.LinuxDeviceCgroup{Allow: d.GetAllow(), Type: d.GetType(), Access: d.GetAccess()}
		// Type "a" (or none, which means "a") covers every device
		// whatever the numbers.
		if d.GetType() != "a" && d.GetType() != "" {
			rule.Major, rule.Minor = wildcard(d.GetMajor()), wildcard(d.GetMinor())
		}
		out.Devices = append(out.Devices, rule)
	}
	if m := r.GetMemory(); m != nil {
		if m.GetSwappiness() > 100 {
			return nil, errdefs.InvalidArgument(field+".Memory.Swappiness", fmt.Sprintf("%d is above 100", m.GetSwappiness()))
		}
		out.Memory = &specs.LinuxMemory{
			Limit:       nonZero(m.GetLimit()),
			Reservation: nonZero(m.GetReservation()),
			Swap:        nonZero(m.GetSwap()),
			Kernel:      nonZero(m.GetKernel()),
			KernelTCP:   nonZero(m.GetKernelTCP()),
			Swappiness:  nonZero(m.GetSwappiness()),
		}
		if m.GetDisableOOMKiller() {
			out.Memory.DisableOOMKiller = ptr(true)
		}
	}
	if c := r.GetCPU(); c != nil {
		out.CPU = &specs.LinuxCPU{
			Shares:          nonZero(c.GetShares()),
			Quota:           nonZero(c.GetQuota()),
			Period:          nonZero(c.GetPeriod()),
			RealtimeRuntime: nonZero(c.GetRealtimeRuntime()),
			RealtimePeriod:  nonZero(c.GetRealtimePeriod()),
			Cpus:            c.GetCpus(),
			Mems:            c.GetMems(),
		}
	}
	if p := r.GetPids(); p != nil {
		out.Pids = &specs.LinuxPids{Limit: nonZero(p.GetLimit())}
	}
	if b := r.GetBlockIO(); b != nil {
		bio, err := convertBlockIO(field+".BlockIO", b)
		if err != nil {
			return nil, err
		}
		out.BlockIO = bio
	}
	for _, h := range r.GetHugepageLimits() {
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.GetPagesize(), Limit: h.GetLimit()})
	}
	if n := r.GetNetwork(); n != nil {
		out.Network = &specs.LinuxNetwork{ClassID: nonZero(n.GetClassID())}
		for _, p := range n.GetPriorities() {
			out.Network.Priorities = append(out.Network.Priorities, specs.LinuxInterfacePriority{Name: p.GetName(), Priority: p.GetPriority()})
		}
	}
	return out, nil
}

func convertBlockIO(field string, b *pb.LinuxBlockIO) (*specs.LinuxBlockIO, error) {
	weight := func(f string, w uint32) (*uint16, error) {
		if w > math.MaxUint16 {
			return nil, errdefs.InvalidArgument(f, fmt.Sprintf("%d is above %d", w, math.MaxUint16))
		}
		return nonZero(uint16(w)), nil
	}
	out := &specs.LinuxBlockIO{}
	var err error
	if out.Weight, err = weight(field+".Weight", b.GetWeight()); err != nil {
		return nil, err
	}
	if out.LeafWeight, err = weight(field+".LeafWeight", b.GetLeafWeight()); err != nil {
		return nil, err
	}
	for i, d := range b.GetWeightDevice() {
		f := fmt.Sprintf("%s.WeightDevice[%d]", field, i)
		wd := specs.LinuxWeightDevice{}
		wd.Major, wd.Minor = d.GetMajor(), d.GetMinor()
		if wd.Weight, err = weight(f+".Weight", d.GetWeight()); err != nil {
			return nil, err
		}
		if wd.LeafWeight, err = weight(f+".LeafWeight", d.GetLeafWeight()); err != nil {
			return nil, err
		}
		out.WeightDevice = append(out.WeightDevice, wd)
	}
	out.ThrottleReadBpsDevice = throttles(b.GetThrottleReadBpsDevice())
	out.ThrottleWriteBpsDevice = throttles(b.GetThrottleWriteBpsDevice())
	out.ThrottleReadIOPSDevice = throttles(b.GetThrottleReadIOPSDevice())
	out.ThrottleWriteIOPSDevice = throttles(b.GetThrottleWriteIOPSDevice())
	return out, nil
}

func throttles(in []*pb.LinuxThrottleDevice) []specs.LinuxThrottleDevice {
	var out []specs.LinuxThrottleDevice
	for _, d := range in {
		td := specs.LinuxThrottleDevice{Rate: d.GetRate()}
		td.Major, td.Minor = d.GetMajor(), d.GetMinor()
		out = append(out, td)
	}
	return out
}

func convertSeccomp(s *pb.LinuxSeccomp) *specs.LinuxSeccomp {
	out := &specs.LinuxSeccomp{DefaultAction: specs.LinuxSeccompAction(s.GetDefaultAction())}
	for _, a := range s.GetArchitectures() {
		out.Architectures = append(out.Architectures, specs.Arch(a))
	}
	for _, f := range s.GetFlags() {
		out.Flags = append(out.Flags, specs.LinuxSeccompFlag(f))
	}
	for _, sc := range s.GetSyscalls() {
		call := specs.LinuxSyscall{Names: slices.Clone(sc.GetNames()), Action: specs.LinuxSeccompAction(sc.GetAction())}
		// A oneof: set means set, even to 0.
		if _, ok := sc.GetErrnoRet().(*pb.LinuxSyscall_Errnoret); ok {
			call.ErrnoRet = ptr(uint(sc.GetErrnoret()))
		}
		for _, a := range sc.GetArgs() {
			call.Args = append(call.Args, specs.LinuxSeccompArg{
				Index:    uint(a.GetIndex()),
				Value:    a.GetValue(),
				ValueTwo: a.GetValueTwo(),
				Op:       specs.LinuxSeccompOperator(a.GetOp()),
			})
		}
		out.Syscalls = append(out.Syscalls, call)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// nonZero is v, or nil for zero: unset, in proto3's terms.
func nonZero[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// wildcard is a device number, or nil (any) for a negative one.
func wildcard(n int64) *int64 {
	if n < 0 {
		return nil
	}
	return &n
}

func checkNoNUL(field, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q contains a NUL byte", s))
	}
	return nil
}

func checkAbs(field, p string) error {
	if p == "" {
		return errdefs.InvalidArgument(field, "must be set")
	}
	if !filepath.IsAbs(p) {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not absolute", p))
	}
	return checkNoNUL(field, p)
}

func checkAbsClean(field, p string) error {
	if err := checkAbs(field, p); err != nil {
		return err
	}
	if filepath.Clean(p) != p {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not clean (%q)", p, filepath.Clean(p)))
	}
	return nil
}
