package kata

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// sysTree makes a sysfs-like tree: cpu0 without an online file (the boot
// CPU), the CPUs in cpus with theirs, and the memory blocks in mem.
func sysTree(t *testing.T, cpus, mem map[string]string) string {
	t.Helper()
	root := t.TempDir()
	write := func(p, v string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "devices/system/cpu/cpu0"), 0o755)
	write(filepath.Join(root, "devices/system/cpu/online"), "0\n")
	for name, v := range cpus {
		write(filepath.Join(root, "devices/system/cpu", name, "online"), v)
	}
	for name, v := range mem {
		write(filepath.Join(root, "devices/system/memory", name, "online"), v)
	}
	return root
}

func readTrim(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestOnlineCPUMem(t *testing.T) {
	root := sysTree(t, map[string]string{"cpu1": "1\n", "cpu2": "0\n", "cpu3": "0\n", "cpufreq": "0"},
		map[string]string{"memory0": "1\n", "memory7": "0\n", "memory8": "0\n"})
	cpu := func(n string) string { return readTrim(t, filepath.Join(root, "devices/system/cpu", n, "online")) }
	mem := func(n string) string { return readTrim(t, filepath.Join(root, "devices/system/memory", n, "online")) }
	// One CPU, no memory.
	if err := onlineCPUMem(root, 1, true); err != nil {
		t.Fatal(err)
	}
	if got := cpu("cpu2") + cpu("cpu3"); got != "10" && got != "01" {
		t.Errorf("after onlining 1 CPU: cpu2, cpu3 = %s", got)
	}
	if mem("memory7") != "0" {
		t.Error("cpu_only onlined memory")
	}
	// The other CPU and all memory.
	if err := onlineCPUMem(root, 1, false); err != nil {
		t.Fatal(err)
	}
	if cpu("cpu2") != "1" || cpu("cpu3") != "1" || mem("memory7") != "1" || mem("memory8") != "1" {
		t.Errorf("cpus %s %s, memory %s %s; want all online", cpu("cpu2"), cpu("cpu3"), mem("memory7"), mem("memory8"))
	}
	if cpu("cpufreq") != "0" {
		t.Error("a directory that is not a CPU was written")
	}
	// More CPUs than are offline: refused once the wait is over.
	err := onlineCPUMem(root, 2, true)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "brought 0 of 2 CPUs online") {
		t.Errorf("onlining 2 CPUs none of which is offline: %v", err)
	}
}

func TestOnlineCPUMemRefused(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	_, err := c.OnlineCPUMem(t.Context(), &pb.OnlineCPUMemRequest{NbCpus: 1 << 20, Wait: true})
	wantCode(t, "nb_cpus", err, codes.InvalidArgument, "nb_cpus: ")
}

func TestProbeMemory(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "devices/system/memory")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "block_size_bytes"), []byte("8000000\n"), 0o644)
	err := probeMemory(root, []uint64{0x100000000})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "probe") {
		t.Errorf("without a probe file: %v", err)
	}
	probe := filepath.Join(dir, "probe")
	os.WriteFile(probe, nil, 0o644)
	for _, bad := range [][]uint64{nil, {0x100000000, 0x100000001}} {
		if err := probeMemory(root, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%#x: %v", bad, err)
		}
	}
	if b, _ := os.ReadFile(probe); len(b) != 0 {
		t.Errorf("a refused probe wrote %q", b)
	}
	if err := probeMemory(root, []uint64{0x108000000}); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, probe); got != "0x108000000" {
		t.Errorf("probe got %q", got)
	}
}

func TestGuestTime(t *testing.T) {
	for _, bad := range []struct {
		sec, usec int64
		field     string
	}{
		{-1, 0, "Sec"}, {0, 0, "Sec"}, {1 << 40, 0, "Sec"}, {maxClock, 0, "Sec"},
		{1_700_000_000, -1, "Usec"}, {1_700_000_000, 1_000_000, "Usec"},
	} {
		if _, err := guestTime(bad.sec, bad.usec); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), bad.field+": ") {
			t.Errorf("%d.%06d: %v", bad.sec, bad.usec, err)
		}
	}
	ts, err := guestTime(1_700_000_000, 123456)
	if err != nil || ts.Sec != 1_700_000_000 || ts.Nsec != 123456000 {
		t.Errorf("guestTime = %v, %v", ts, err)
	}
	// Through the service, bad values never reach the clock.
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	before := time.Now()
	_, err = c.SetGuestDateTime(t.Context(), &pb.SetGuestDateTimeRequest{Sec: -5})
	wantCode(t, "SetGuestDateTime", err, codes.InvalidArgument, "Sec: ")
	if time.Since(before) < 0 {
		t.Error("the clock went back")
	}
}

func TestReseedRefused(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	for _, data := range [][]byte{nil, make([]byte, maxEntropy+1)} {
		_, err := c.ReseedRandomDev(t.Context(), &pb.ReseedRandomDevRequest{Data: data})
		wantCode(t, "ReseedRandomDev", err, codes.InvalidArgument, "data: ")
	}
	// Not a random device: the ioctl fails, and says so.
	f := filepath.Join(t.TempDir(), "random")
	os.WriteFile(f, nil, 0o644)
	if err := reseed(f, []byte("x")); err == nil || !strings.Contains(err.Error(), "RNDADDENTROPY") {
		t.Errorf("reseed of a plain file: %v", err)
	}
}

func TestPCIPath(t *testing.T) {
	for in, want := range map[string][]uint32{"02": {2}, "2": {2}, "02/03": {2, 3}, "1f/00/0a": {0x1f, 0, 0xa}} {
		got, err := parsePCIPath("source", in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("parsePCIPath(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "/", "02/", "20", "123", "x", "02//03", "-1", "0x2", "1/2/3/4/5/6/7/8/9", "../vda"} {
		if _, err := parsePCIPath("source", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("parsePCIPath(%q): %v", bad, err)
		}
	}
	for n, want := range map[uint32]string{0: "vda", 1: "vdb", 25: "vdz", 26: "vdaa", 27: "vdab", 701: "vdzz", 702: "vdaaa"} {
		if got := diskName(n); got != want {
			t.Errorf("diskName(%d) = %s, want %s", n, got, want)
		}
	}
	// A guest without a PCI bus: one element, the disk's position.
	none := filepath.Join(t.TempDir(), "pci0000:00")
	if dev, err := pciDisk(none, []uint32{1}); err != nil || dev != "/dev/vdb" {
		t.Errorf("microvm [1]: %s, %v", dev, err)
	}
	if _, err := pciDisk(none, []uint32{1, 2}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("microvm [1 2]: %v", err)
	}
	// With one: the disk behind a bridge, as sysfs lays it out.
	root := filepath.Join(t.TempDir(), "pci0000:00")
	os.MkdirAll(filepath.Join(root, "0000:00:02.0/0000:01:03.0/virtio4/block/vdc"), 0o755)
	os.MkdirAll(filepath.Join(root, "0000:00:05.0/virtio1/net/eth0"), 0o755)
	if dev, err := pciDisk(root, []uint32{2, 3}); err != nil || dev != "/dev/vdc" {
		t.Errorf("02/03: %s, %v", dev, err)
	}
	for _, slots := range [][]uint32{{3}, {2, 4}, {5}} {
		if _, err := pciDisk(root, slots); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%v: %v", slots, err)
		}
	}
}

func TestSwapHeader(t *testing.T) {
	var uuid [16]byte
	copy(uuid[:], "0123456789abcdef")
	if _, err := swapHeader(9*4096, 4096, uuid); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("9 pages: %v", err)
	}
	hdr, err := swapHeader(64<<20, 4096, uuid)
	if err != nil {
		t.Fatal(err)
	}
	last, ok := parseSwapHeader(hdr)
	if !ok || last != 64<<20/4096-1 {
		t.Errorf("parseSwapHeader = %d, %v", last, ok)
	}
	if _, ok := parseSwapHeader(make([]byte, 4096)); ok {
		t.Error("zeros read as a swap area")
	}
	// What util-linux makes of it.
	blkid, err := exec.LookPath("blkid")
	if err != nil {
		t.Skip("no blkid to read the header back")
	}
	img := filepath.Join(t.TempDir(), "swap.img")
	if err := os.WriteFile(img, hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(blkid, "-p", "-o", "export", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "TYPE=swap") || !strings.Contains(string(out), "VERSION=1") {
		t.Errorf("blkid -p %s: %v\n%s", img, err, out)
	}
}

func TestLimitsRefused(t *testing.T) {
	bundles := t.TempDir()
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: bundles})
	for _, tc := range []struct {
		prefix string
		proc   *pb.Process
	}{
		{"OCI.Process.Rlimits[0].Type: ", &pb.Process{Rlimits: []*pb.POSIXRlimit{{Type: "RLIMIT_BOGUS", Hard: 1, Soft: 1}}}},
		{"OCI.Process.Rlimits[0].Type: ", &pb.Process{Rlimits: []*pb.POSIXRlimit{{Type: "NOFILE", Hard: 1, Soft: 1}}}},
		{"OCI.Process.Rlimits[0].Soft: ", &pb.Process{Rlimits: []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 10, Soft: 11}}}},
		{"OCI.Process.Rlimits[1].Type: ", &pb.Process{Rlimits: []*pb.POSIXRlimit{{Type: "RLIMIT_CORE"}, {Type: "RLIMIT_CORE"}}}},
		{"OCI.Process.Capabilities.Bounding[1]: ", &pb.Process{Capabilities: &pb.LinuxCapabilities{Bounding: []string{"CAP_KILL", "CAP_FLY"}}}},
		{"OCI.Process.Capabilities.Ambient[0]: ", &pb.Process{Capabilities: &pb.LinuxCapabilities{Ambient: []string{"cap_kill"}}}},
	} {
		spec := minimalSpec()
		tc.proc.Args = []string{"/bin/true"}
		spec.Process = tc.proc
		_, err := c.CreateContainer(t.Context(), &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
		wantCode(t, tc.prefix, err, codes.InvalidArgument, tc.prefix)
	}
	_, err := c.ExecProcess(t.Context(), &pb.ExecProcessRequest{ContainerId: "c1", ExecId: "e", Process: &pb.Process{
		Args: []string{"true"}, Capabilities: &pb.LinuxCapabilities{Effective: []string{"CAP_NOPE"}}}})
	wantCode(t, "exec", err, codes.InvalidArgument, "process.Capabilities.Effective[0]: ")
	if entries, _ := os.ReadDir(bundles); len(entries) != 0 {
		t.Errorf("bundles left: %v", entries)
	}
}

func TestDevicesSpec(t *testing.T) {
	const node = "/dev/loop0"
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Skipf("needs the block device %s: %v", node, err)
	}
	s := New(Config{Log: testLog(), Runtime: "/nonexistent"})
	spec := func() *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{
			Devices: []specs.LinuxDevice{{Path: "/dev/xvda", Type: "b", Major: 202, Minor: 0}},
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
				{Allow: false, Access: "rwm"},
				{Allow: true, Type: "b", Major: ptr[int64](202), Minor: ptr[int64](0), Access: "rw"},
			}},
		}}
	}
	sp := spec()
	if err := s.Devices(t.Context(), "devices", []Device{{Type: "mmioblk", VMPath: node, ContainerPath: "/dev/xvda"}}, sp); err != nil {
		t.Fatal(err)
	}
	maj, mnr := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	if d := sp.Linux.Devices[0]; d.Major != maj || d.Minor != mnr {
		t.Errorf("spec device %d:%d, want the guest's %d:%d", d.Major, d.Minor, maj, mnr)
	}
	if r := sp.Linux.Resources.Devices[1]; *r.Major != maj || *r.Minor != mnr {
		t.Errorf("cgroup rule %d:%d, want %d:%d", *r.Major, *r.Minor, maj, mnr)
	}
	for _, tc := range []struct {
		dev    Device
		prefix string
	}{
		{Device{Type: "vfio", VMPath: node}, "devices[0].type: "},
		{Device{Type: "mmioblk", VMPath: "vda"}, "devices[0].vm_path: "},
		{Device{Type: "blk", ID: "zz"}, "devices[0].id: "},
		{Device{Type: "blk", VMPath: "/dev/../etc/passwd"}, "devices[0].vm_path: "},
		{Device{Type: "mmioblk", VMPath: node, ContainerPath: "/dev/other"}, "devices[0].container_path: "},
		{Device{Type: "mmioblk", VMPath: "/dev/null", ContainerPath: "/dev/xvda"}, "devices[0]: "},
		{Device{Type: "mmioblk", VMPath: node, Options: []string{"x"}}, "devices[0].options: "},
	} {
		sp := spec()
		err := s.Devices(t.Context(), "devices", []Device{tc.dev}, sp)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tc.prefix) {
			t.Errorf("%+v: %v, want InvalidArgument %q", tc.dev, err, tc.prefix)
		}
		if sp.Linux.Devices[0].Major != 202 {
			t.Errorf("%+v: the spec changed", tc.dev)
		}
	}
}

func TestSpecMountsRefused(t *testing.T) {
	bundles := t.TempDir()
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: bundles})
	for _, tc := range []struct {
		prefix string
		m      *pb.Mount
	}{
		{"OCI.Mounts[0].source: ", &pb.Mount{Destination: "/host/proc", Type: "bind", Source: "/proc"}},
		{"OCI.Mounts[0].source: ", &pb.Mount{Destination: "/x", Type: "none", Source: "/proc/1/root", Options: []string{"rbind"}}},
		{"OCI.Mounts[0].source: ", &pb.Mount{Destination: "/sys", Type: "bind", Source: "/sys"}},
		{"OCI.Mounts[0].source: ", &pb.Mount{Destination: "/x", Type: "bind", Source: "/sys/fs/cgroup"}},
		{"OCI.Mounts[0].type: ", &pb.Mount{Destination: "/proc", Type: "tmpfs", Source: "tmpfs"}},
		{"OCI.Mounts[0].type: ", &pb.Mount{Destination: "/sys", Type: "tmpfs", Source: "tmpfs"}},
		{"OCI.Mounts[0].destination: ", &pb.Mount{Destination: "/proc/sysrq-trigger", Type: "bind", Source: "/run/x"}},
	} {
		spec := minimalSpec()
		spec.Mounts = []*pb.Mount{tc.m}
		_, err := c.CreateContainer(t.Context(), &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
		wantCode(t, tc.prefix, err, codes.InvalidArgument, tc.prefix)
	}
	if entries, _ := os.ReadDir(bundles); len(entries) != 0 {
		t.Errorf("bundles left: %v", entries)
	}
	// A container's own proc and sysfs, and lxcfs's files, pass.
	ms := []specs.Mount{{Destination: "/proc", Type: "proc"}, {Destination: "/sys", Type: "sysfs"},
		{Destination: "/proc/meminfo", Type: "bind", Source: "/var/lib/lxcfs/proc/meminfo"}}
	if err := checkSpecMounts("m", ms); err != nil {
		t.Error(err)
	}
}
