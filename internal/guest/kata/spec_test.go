package kata

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// fullSpec sets every field of Kata's spec that the agent maps, each to a
// value of its own, so that a field dropped or put in another's place
// shows.
func fullSpec() *pb.Spec {
	hook := func(name string) *pb.Hook {
		return &pb.Hook{Path: "/hooks/" + name, Args: []string{name, "arg"}, Env: []string{"HOOK=" + name}, Timeout: int64(len(name))}
	}
	throttle := func(n int64) []*pb.LinuxThrottleDevice {
		return []*pb.LinuxThrottleDevice{{Major: 8, Minor: n, Rate: uint64(n) * 1000}}
	}
	return &pb.Spec{
		Version: "1.0.2",
		Process: &pb.Process{
			Terminal:    true,
			ConsoleSize: &pb.Box{Height: 24, Width: 80},
			User:        &pb.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{10, 20}, Username: "user"},
			Args:        []string{"/bin/sh", "-c", "echo hi"},
			Env:         []string{"PATH=/bin", "A=b=c"},
			Cwd:         "/work",
			Capabilities: &pb.LinuxCapabilities{
				Bounding:    []string{"CAP_CHOWN"},
				Effective:   []string{"CAP_KILL"},
				Inheritable: []string{"CAP_FOWNER"},
				Permitted:   []string{"CAP_SETUID"},
				Ambient:     []string{"CAP_SETGID"},
			},
			Rlimits:         []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 2048, Soft: 1024}},
			NoNewPrivileges: true,
			ApparmorProfile: "profile",
			OOMScoreAdj:     -500,
			SelinuxLabel:    "system_u:system_r:container_t:s0",
		},
		Root:     &pb.Root{Path: "/run/rootfs/busybox", Readonly: true},
		Hostname: "box",
		Mounts: []*pb.Mount{
			{Destination: "/proc", Source: "proc", Type: "proc", Options: []string{"nosuid"}},
			{Destination: "/data", Source: "/run/data", Type: "bind", Options: []string{"rbind", "ro"}},
		},
		Hooks: &pb.Hooks{
			Prestart:        []*pb.Hook{hook("prestart")},
			Poststart:       []*pb.Hook{hook("poststart")},
			Poststop:        []*pb.Hook{hook("poststop")},
			CreateRuntime:   []*pb.Hook{hook("createruntime")},
			CreateContainer: []*pb.Hook{hook("createcontainer")},
			StartContainer:  []*pb.Hook{hook("startcontainer")},
		},
		Annotations: map[string]string{"io.example/a": "1"},
		Linux: &pb.Linux{
			UIDMappings: []*pb.LinuxIDMapping{{HostID: 100000, ContainerID: 1, Size: 65536}},
			GIDMappings: []*pb.LinuxIDMapping{{HostID: 200000, ContainerID: 2, Size: 1000}},
			Sysctl:      map[string]string{"net.ipv4.ip_forward": "1"},
			Resources: &pb.LinuxResources{
				Devices: []*pb.LinuxDeviceCgroup{
					{Allow: true, Type: "c", Major: 1, Minor: 3, Access: "rwm"},
					{Allow: true, Type: "b", Major: -1, Minor: 5, Access: "r"},
				},
				Memory: &pb.LinuxMemory{Limit: 1 << 30, Reservation: 1 << 29, Swap: 2 << 30, Kernel: 1 << 20,
					KernelTCP: 1 << 19, Swappiness: 60, DisableOOMKiller: true},
				CPU: &pb.LinuxCPU{Shares: 512, Quota: 50000, Period: 100000, RealtimeRuntime: 950,
					RealtimePeriod: 1000, Cpus: "0-1", Mems: "0"},
				Pids: &pb.LinuxPids{Limit: 99},
				BlockIO: &pb.LinuxBlockIO{
					Weight:                  500,
					LeafWeight:              300,
					WeightDevice:            []*pb.LinuxWeightDevice{{Major: 8, Minor: 16, Weight: 200, LeafWeight: 100}},
					ThrottleReadBpsDevice:   throttle(1),
					ThrottleWriteBpsDevice:  throttle(2),
					ThrottleReadIOPSDevice:  throttle(3),
					ThrottleWriteIOPSDevice: throttle(4),
				},
				HugepageLimits: []*pb.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 1 << 21}},
				Network:        &pb.LinuxNetwork{ClassID: 7, Priorities: []*pb.LinuxInterfacePriority{{Name: "eth0", Priority: 3}}},
			},
			CgroupsPath: "/cabin/c1",
			Namespaces: []*pb.LinuxNamespace{
				{Type: "pid", Path: "/proc/42/ns/pid"}, {Type: "network", Path: "/run/netns/n1"},
			},
			Devices: []*pb.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229, FileMode: 0o666, UID: 1, GID: 2}},
			Seccomp: &pb.LinuxSeccomp{
				DefaultAction: "SCMP_ACT_ERRNO",
				Architectures: []string{"SCMP_ARCH_X86_64"},
				Flags:         []string{"SECCOMP_FILTER_FLAG_LOG"},
				Syscalls: []*pb.LinuxSyscall{{
					Names:    []string{"clone"},
					Action:   "SCMP_ACT_ALLOW",
					ErrnoRet: &pb.LinuxSyscall_Errnoret{Errnoret: 1},
					Args:     []*pb.LinuxSeccompArg{{Index: 1, Value: 2, ValueTwo: 3, Op: "SCMP_CMP_MASKED_EQ"}},
				}},
			},
			RootfsPropagation: "rslave",
			MaskedPaths:       []string{"/proc/kcore"},
			ReadonlyPaths:     []string{"/proc/sys"},
			MountLabel:        "system_u:object_r:container_file_t:s0",
			IntelRdt:          &pb.LinuxIntelRdt{L3CacheSchema: "L3:0=ff"},
		},
	}
}

// wantSpec is fullSpec as runtime-spec has it.
func wantSpec() *specs.Spec {
	hook := func(name string) []specs.Hook {
		return []specs.Hook{{Path: "/hooks/" + name, Args: []string{name, "arg"}, Env: []string{"HOOK=" + name}, Timeout: ptr(len(name))}}
	}
	throttle := func(n int64) []specs.LinuxThrottleDevice {
		d := specs.LinuxThrottleDevice{Rate: uint64(n) * 1000}
		d.Major, d.Minor = 8, n
		return []specs.LinuxThrottleDevice{d}
	}
	wd := specs.LinuxWeightDevice{Weight: ptr(uint16(200)), LeafWeight: ptr(uint16(100))}
	wd.Major, wd.Minor = 8, 16
	return &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{
			Terminal:    true,
			ConsoleSize: &specs.Box{Height: 24, Width: 80},
			User:        specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{10, 20}, Username: "user"},
			Args:        []string{"/bin/sh", "-c", "echo hi"},
			Env:         []string{"PATH=/bin", "A=b=c"},
			Cwd:         "/work",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:    []string{"CAP_CHOWN"},
				Effective:   []string{"CAP_KILL"},
				Inheritable: []string{"CAP_FOWNER"},
				Permitted:   []string{"CAP_SETUID"},
				Ambient:     []string{"CAP_SETGID"},
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 2048, Soft: 1024}},
			NoNewPrivileges: true,
			ApparmorProfile: "profile",
			OOMScoreAdj:     ptr(-500),
			SelinuxLabel:    "system_u:system_r:container_t:s0",
		},
		Root:     &specs.Root{Path: "/run/rootfs/busybox", Readonly: true},
		Hostname: "box",
		Mounts: []specs.Mount{
			{Destination: "/proc", Source: "proc", Type: "proc", Options: []string{"nosuid"}},
			{Destination: "/data", Source: "/run/data", Type: "bind", Options: []string{"rbind", "ro"}},
		},
		Hooks: &specs.Hooks{
			Prestart:        hook("prestart"),
			CreateRuntime:   hook("createruntime"),
			CreateContainer: hook("createcontainer"),
			StartContainer:  hook("startcontainer"),
			Poststart:       hook("poststart"),
			Poststop:        hook("poststop"),
		},
		Annotations: map[string]string{"io.example/a": "1"},
		Linux: &specs.Linux{
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 1, HostID: 100000, Size: 65536}},
			GIDMappings: []specs.LinuxIDMapping{{ContainerID: 2, HostID: 200000, Size: 1000}},
			Sysctl:      map[string]string{"net.ipv4.ip_forward": "1"},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{
					{Allow: true, Type: "c", Major: ptr(int64(1)), Minor: ptr(int64(3)), Access: "rwm"},
					{Allow: true, Type: "b", Major: nil, Minor: ptr(int64(5)), Access: "r"},
				},
				Memory: &specs.LinuxMemory{Limit: ptr(int64(1 << 30)), Reservation: ptr(int64(1 << 29)),
					Swap: ptr(int64(2 << 30)), Kernel: ptr(int64(1 << 20)), KernelTCP: ptr(int64(1 << 19)),
					Swappiness: ptr(uint64(60)), DisableOOMKiller: ptr(true)},
				CPU: &specs.LinuxCPU{Shares: ptr(uint64(512)), Quota: ptr(int64(50000)), Period: ptr(uint64(100000)),
					RealtimeRuntime: ptr(int64(950)), RealtimePeriod: ptr(uint64(1000)), Cpus: "0-1", Mems: "0"},
				Pids: &specs.LinuxPids{Limit: ptr(int64(99))},
				BlockIO: &specs.LinuxBlockIO{
					Weight:                  ptr(uint16(500)),
					LeafWeight:              ptr(uint16(300)),
					WeightDevice:            []specs.LinuxWeightDevice{wd},
					ThrottleReadBpsDevice:   throttle(1),
					ThrottleWriteBpsDevice:  throttle(2),
					ThrottleReadIOPSDevice:  throttle(3),
					ThrottleWriteIOPSDevice: throttle(4),
				},
				HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 1 << 21}},
				Network:        &specs.LinuxNetwork{ClassID: ptr(uint32(7)), Priorities: []specs.LinuxInterfacePriority{{Name: "eth0", Priority: 3}}},
			},
			CgroupsPath: "/cabin/c1",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace, Path: "/proc/42/ns/pid"}, {Type: specs.NetworkNamespace, Path: "/run/netns/n1"},
			},
			Devices: []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229,
				FileMode: ptr(os.FileMode(0o666)), UID: ptr(uint32(1)), GID: ptr(uint32(2))}},
			Seccomp: &specs.LinuxSeccomp{
				DefaultAction: specs.ActErrno,
				Architectures: []specs.Arch{specs.ArchX86_64},
				Flags:         []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog},
				Syscalls: []specs.LinuxSyscall{{
					Names:    []string{"clone"},
					Action:   specs.ActAllow,
					ErrnoRet: ptr(uint(1)),
					Args:     []specs.LinuxSeccompArg{{Index: 1, Value: 2, ValueTwo: 3, Op: specs.OpMaskedEqual}},
				}},
			},
			RootfsPropagation: "rslave",
			MaskedPaths:       []string{"/proc/kcore"},
			ReadonlyPaths:     []string{"/proc/sys"},
			MountLabel:        "system_u:object_r:container_file_t:s0",
			IntelRdt:          &specs.LinuxIntelRdt{L3CacheSchema: "L3:0=ff"},
		},
	}
}

// notMapped are the fields of Kata's spec the agent leaves out: platforms
// other than Linux.
var notMapped = map[protoreflect.Name]bool{"Solaris": true, "Windows": true}

// checkFull fails for every field of m, recursively, left at its zero
// value, so that fullSpec keeps up with the proto.
func checkFull(t *testing.T, path string, m protoreflect.Message) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if notMapped[fd.Name()] {
			continue
		}
		p := path + "." + string(fd.Name())
		if !m.Has(fd) {
			t.Errorf("fullSpec leaves %s unset", p)
			continue
		}
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := m.Get(fd).List()
			for j := range l.Len() {
				checkFull(t, p, l.Get(j).Message())
			}
		case fd.IsMap() || fd.IsList():
		case fd.Kind() == protoreflect.MessageKind:
			checkFull(t, p, m.Get(fd).Message())
		}
	}
}

func TestConvertSpecFull(t *testing.T) {
	in := fullSpec()
	checkFull(t, "Spec", in.ProtoReflect())
	got, err := convertSpec("OCI", in)
	if err != nil {
		t.Fatal(err)
	}
	if want := wantSpec(); !reflect.DeepEqual(got, want) {
		gj, _ := json.MarshalIndent(got, "", " ")
		wj, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("converted spec:\n%s\nwant:\n%s", gj, wj)
	}
	// What the runtime reads back is what was meant.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var read specs.Spec
	if err := json.Unmarshal(b, &read); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&read, got) {
		t.Errorf("config.json does not read back as written:\n%s", b)
	}
	// And back to Kata's: nothing was dropped on the way.
	if back := toKata(&read); !proto.Equal(back, in) {
		t.Errorf("round trip lost something:\n got %v\nwant %v", back, in)
	}
}

// TestConvertSpecDefaults covers the zero values proto3 cannot tell from
// unset.
func TestConvertSpecDefaults(t *testing.T) {
	got, err := convertSpec("OCI", &pb.Spec{
		Process: &pb.Process{Args: []string{"true"}},
		Root:    &pb.Root{Path: "/rootfs"},
		Linux: &pb.Linux{
			Resources: &pb.LinuxResources{
				Devices: []*pb.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Type: "a", Major: 5, Minor: 1}},
				Memory:  &pb.LinuxMemory{},
				Pids:    &pb.LinuxPids{},
			},
			Devices: []*pb.LinuxDevice{{Path: "/dev/x", Type: "c"}},
			Seccomp: &pb.LinuxSeccomp{Syscalls: []*pb.LinuxSyscall{{Names: []string{"a"}}, {Names: []string{"b"}, ErrnoRet: &pb.LinuxSyscall_Errnoret{}}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != specs.Version {
		t.Errorf("version %q, want %q", got.Version, specs.Version)
	}
	if got.Process.Cwd != "/" {
		t.Errorf("cwd %q, want /", got.Process.Cwd)
	}
	if got.Process.OOMScoreAdj == nil || *got.Process.OOMScoreAdj != 0 {
		t.Errorf("oom score adj %v, want 0 set (not the agent's inherited)", got.Process.OOMScoreAdj)
	}
	for i, d := range got.Linux.Resources.Devices {
		if d.Major != nil || d.Minor != nil {
			t.Errorf("device rule %d of type %q has numbers: %+v", i, d.Type, d)
		}
	}
	if m := got.Linux.Resources.Memory; !reflect.DeepEqual(m, &specs.LinuxMemory{}) {
		t.Errorf("zero memory limits set: %+v", m)
	}
	if p := got.Linux.Resources.Pids; p.Limit != nil {
		t.Errorf("zero pids limit set: %v", *p.Limit)
	}
	if d := got.Linux.Devices[0]; d.FileMode != nil || *d.UID != 0 || *d.GID != 0 {
		t.Errorf("device %+v: want no mode, owner root", d)
	}
	sc := got.Linux.Seccomp.Syscalls
	if sc[0].ErrnoRet != nil || sc[1].ErrnoRet == nil || *sc[1].ErrnoRet != 0 {
		t.Errorf("errnoRet: unset %v, set to 0 %v", sc[0].ErrnoRet, sc[1].ErrnoRet)
	}
}

func TestConvertSpecInvalid(t *testing.T) {
	for _, c := range []struct {
		field  string
		mutate func(*pb.Spec)
	}{
		{"OCI.Process", func(s *pb.Spec) { s.Process = nil }},
		{"OCI.Process.Args", func(s *pb.Spec) { s.Process.Args = nil }},
		{"OCI.Process.Args", func(s *pb.Spec) { s.Process.Args = []string{""} }},
		{"OCI.Process.Args", func(s *pb.Spec) { s.Process.Args = []string{"a\x00b"} }},
		{"OCI.Process.Env", func(s *pb.Spec) { s.Process.Env = []string{"NOEQUALS"} }},
		{"OCI.Process.Env", func(s *pb.Spec) { s.Process.Env = []string{"=v"} }},
		{"OCI.Process.Cwd", func(s *pb.Spec) { s.Process.Cwd = "relative" }},
		{"OCI.Process.OOMScoreAdj", func(s *pb.Spec) { s.Process.OOMScoreAdj = 1001 }},
		{"OCI.Process.Rlimits[0].Type", func(s *pb.Spec) { s.Process.Rlimits[0].Type = "NOFILE" }},
		{"OCI.Root.Path", func(s *pb.Spec) { s.Root = nil }},
		{"OCI.Root.Path", func(s *pb.Spec) { s.Root.Path = "rootfs" }},
		{"OCI.Root.Path", func(s *pb.Spec) { s.Root.Path = "/run/../rootfs" }},
		{"OCI.Mounts[1].destination", func(s *pb.Spec) { s.Mounts[1].Destination = "data" }},
		{"OCI.Hooks.Poststop[0].Path", func(s *pb.Spec) { s.Hooks.Poststop[0].Path = "hook" }},
		{"OCI.Hooks.Prestart[0].Timeout", func(s *pb.Spec) { s.Hooks.Prestart[0].Timeout = -1 }},
		{"OCI.Linux.Namespaces[0].Type", func(s *pb.Spec) { s.Linux.Namespaces[0].Type = "pids" }},
		{"OCI.Linux.Namespaces[1].Path", func(s *pb.Spec) { s.Linux.Namespaces[1].Path = "netns" }},
		{"OCI.Linux.Devices[0].Path", func(s *pb.Spec) { s.Linux.Devices[0].Path = "" }},
		{"OCI.Linux.Devices[0].Type", func(s *pb.Spec) { s.Linux.Devices[0].Type = "x" }},
		{"OCI.Linux.Resources.Memory.Swappiness", func(s *pb.Spec) { s.Linux.Resources.Memory.Swappiness = 101 }},
		{"OCI.Linux.Resources.BlockIO.Weight", func(s *pb.Spec) { s.Linux.Resources.BlockIO.Weight = 70000 }},
		{"OCI.Linux.Resources.BlockIO.WeightDevice[0].LeafWeight", func(s *pb.Spec) { s.Linux.Resources.BlockIO.WeightDevice[0].LeafWeight = 70000 }},
	} {
		s := fullSpec()
		c.mutate(s)
		_, err := convertSpec("OCI", s)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), c.field+": ") {
			t.Errorf("%s: got %v, want an invalid argument naming it", c.field, err)
		}
	}
	if _, err := convertSpec("OCI", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("nil spec: %v", err)
	}
}
