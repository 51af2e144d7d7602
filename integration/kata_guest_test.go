package integration

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
)

// TestKataGuest drives the guest-wide AgentService calls, CopyFile and
// what a container spec may ask for, through cabind's relay with only the
// seed protos, in a VM of its own: the calls change the VM's clock, swap
// and CPUs, which the shared VM's other tests must not see. The VM has
// two CPUs and two blank disks: vda for swap, vdb for a filesystem.
func TestKataGuest(t *testing.T) {
	e := needEnv(t)
	const name = "cit-kataguest"
	dir := t.TempDir()
	var disks []*concierge.DiskImage
	for i, size := range []int64{32 << 20, 64 << 20} {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, &concierge.DiskImage{Path: p, ImageType: concierge.DiskImageType_DISK_IMAGE_RAW, Writable: true})
	}
	t.Cleanup(func() { stopVM(t, e, name) })
	pid := startVM(t, e, name, func(ctx context.Context) (*concierge.StartVmResponse, error) {
		return concierge.NewVmConciergeClient(e.cc).StartVm(ctx, &concierge.StartVmRequest{Name: name, Cpus: 2, Disks: disks})
	})
	g := &guest{t: t, e: e, vm: name, agent: kata.NewAgentServiceClient(e.cc)}

	t.Run("CopyFile", g.testCopyFile)
	t.Run("container spec", g.testContainerSpec)
	t.Run("disk storage and device", g.testDisk)
	t.Run("AddSwap", g.testSwap)
	t.Run("SetGuestDateTime", g.testDateTime)
	t.Run("ReseedRandomDev", func(t *testing.T) {
		_, err := g.agent.ReseedRandomDev(g.ctx(t), &kata.ReseedRandomDevRequest{Data: []byte(strings.Repeat("entropy!", 64))})
		if err != nil {
			t.Fatal(err)
		}
		_, err = g.agent.ReseedRandomDev(g.ctx(t), &kata.ReseedRandomDevRequest{})
		wantCode(t, err, codes.InvalidArgument, "data")
	})
	t.Run("OnlineCPUMem", g.testOnline)
	t.Run("MemHotplugByProbe", func(t *testing.T) {
		_, err := g.agent.MemHotplugByProbe(g.ctx(t), &kata.MemHotplugByProbeRequest{MemHotplugProbeAddr: []uint64{1 << 32}})
		if g.sh(t, "test -e /sys/devices/system/memory/probe && echo yes || echo no") == "no" {
			wantCode(t, err, codes.FailedPrecondition, "/sys/devices/system/memory/probe")
		} else if err != nil {
			t.Log(err) // the kernel may refuse an address it has no memory at
		}
	})
	t.Run("RemoveStaleVirtiofsShareMounts", func(t *testing.T) {
		if _, err := g.agent.RemoveStaleVirtiofsShareMounts(g.ctx(t), &kata.RemoveStaleVirtiofsShareMountsRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	// Last: QEMU killed between two chunks of an upload. The next chunk
	// fails at once, not at its deadline.
	t.Run("QEMU killed mid-copy", func(t *testing.T) {
		req := &kata.CopyFileRequest{Path: kataShare + "/doomed", FileSize: 10, Data: []byte("01234")}
		if _, err := g.agent.CopyFile(g.ctx(t), req); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(pid, 10*time.Second)
		req.Offset, req.Data = 5, []byte("56789")
		ctx, cancel := context.WithTimeout(toVM(context.Background(), name), 30*time.Second)
		defer cancel()
		_, err := g.agent.CopyFile(ctx, req)
		if code := status.Code(err); code == codes.OK || code == codes.DeadlineExceeded {
			t.Errorf("the next chunk to a dead VM: %v", err)
		}
	})
}

// kataShare is upstream's directory for what the host copies in.
const kataShare = "/run/kata-containers/shared/containers"

// guest is the VM of TestKataGuest and its agent.
type guest struct {
	t     *testing.T
	e     *env
	vm    string
	agent kata.AgentServiceClient
}

func (g *guest) ctx(t *testing.T) context.Context { return toVM(testContext(t, 90*time.Second), g.vm) }

// sh runs script in the VM (not in a container) and returns its output,
// trimmed.
func (g *guest) sh(t *testing.T, script string) string {
	t.Helper()
	return strings.TrimSpace(mustExec(t, g.e, g.vm, "sh", "-c", script))
}

// run runs args in the running container id as exec eid and returns its
// output and exit status.
func (g *guest) run(t *testing.T, id, eid string, args ...string) (string, int32) {
	t.Helper()
	ctx := g.ctx(t)
	if _, err := g.agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: &kata.Process{
		Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
	}}); err != nil {
		t.Fatalf("ExecProcess %q: %v", args, err)
	}
	out := readAll(t, g.agent, ctx, id, eid)
	w, err := g.agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: eid})
	if err != nil {
		t.Fatalf("WaitProcess %q: %v", args, err)
	}
	return out, w.GetStatus()
}

// create creates and starts container id.
func (g *guest) create(t *testing.T, id string, spec *kata.Spec, storages ...*kata.Storage) {
	t.Helper()
	ctx := g.ctx(t)
	if _, err := g.agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: storages, OCI: spec}); err != nil {
		t.Fatalf("CreateContainer %s: %v", id, err)
	}
	t.Cleanup(func() {
		g.agent.RemoveContainer(toVM(testContext(t, 60*time.Second), g.vm), &kata.RemoveContainerRequest{ContainerId: id})
	})
	if _, err := g.agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
}

// upload copies data to path in the guest with CopyFile, in 1 MiB chunks
// as Kata's runtime sends them.
func (g *guest) upload(t *testing.T, path string, data []byte, mode uint32, uid, gid int32) error {
	t.Helper()
	req := &kata.CopyFileRequest{Path: path, FileSize: int64(len(data)), FileMode: mode, DirMode: 0o755, Uid: uid, Gid: gid}
	if len(data) == 0 || mode&0o170000 == 0o120000 {
		req.Data = data
		_, err := g.agent.CopyFile(g.ctx(t), req)
		return err
	}
	for off := 0; off < len(data); off += 1 << 20 {
		req.Offset, req.Data = int64(off), data[off:min(off+1<<20, len(data))]
		if _, err := g.agent.CopyFile(g.ctx(t), req); err != nil {
			return err
		}
	}
	return nil
}

const (
	sIFLNK = 0o120000
	sIFDIR = 0o040000
	sIFREG = 0o100000
)

// testCopyFile builds a container's root filesystem with CopyFile alone
// (busybox, its links, directories, a file with an owner), runs a
// container on it and reads the files back from inside; then every
// hostile upload is refused or confined, with nothing left behind.
func (g *guest) testCopyFile(t *testing.T) {
	const root = "/run/kata-containers/it-root"
	ctx := g.ctx(t)
	if _, err := g.agent.CreateSandbox(ctx, &kata.CreateSandboxRequest{Hostname: "kataguest", Storages: []*kata.Storage{
		{Driver: "ephemeral", MountPoint: root, Options: []string{"size=16m"}},
	}}); err != nil {
		t.Fatal(err)
	}
	res, err := execArgs(testContext(t, 60*time.Second), g.e.cc, g.vm, "cat", "/bin/busybox")
	if err != nil || res.code != 0 || len(res.stdout) < 1<<20 {
		t.Fatalf("the guest's busybox: %d bytes, %v", len(res.stdout), err)
	}
	busybox := res.stdout
	if err := g.upload(t, root+"/bin/busybox", busybox, sIFREG|0o755, 0, 0); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"sh", "cat", "stat", "md5sum", "sleep", "ls", "id", "chown", "touch", "dd", "wc"} {
		if err := g.upload(t, root+"/bin/"+tool, []byte("busybox"), sIFLNK|0o777, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"proc", "dev", "tmp", "etc"} {
		if err := g.upload(t, root+"/"+d, nil, sIFDIR|0o755, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.upload(t, root+"/etc/greeting", []byte("hello from the host\n"), sIFREG|0o640, 1000, 2000); err != nil {
		t.Fatal(err)
	}
	spec := kataSpec("sleep", "1000")
	spec.Root = &kata.Root{Path: root}
	g.create(t, "it-cp", spec)
	sum := md5.Sum(busybox)
	out, st := g.run(t, "it-cp", "check", "sh", "-c", "stat -c '%u %g %a' /etc/greeting; cat /etc/greeting; md5sum /bin/busybox")
	want := "1000 2000 640\nhello from the host\n" + hex.EncodeToString(sum[:]) + "  /bin/busybox\n"
	if st != 0 || out != want {
		t.Fatalf("in the container: status %d\n%s\nwant\n%s", st, out, want)
	}
	// Into the running container's root, a file replaced atomically.
	if err := g.upload(t, root+"/etc/greeting", []byte("again\n"), sIFREG|0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	if out, _ := g.run(t, "it-cp", "again", "cat", "/etc/greeting"); out != "again\n" {
		t.Errorf("after a second copy: %q", out)
	}

	guestEtc := g.sh(t, "ls -A /etc | md5sum")
	// Not clean, outside every allowed directory, the agent's own.
	for _, p := range []string{root + "/../it-root/x", root + "/./x", "/etc/passwd", "/run/cabin/bundles/it-cp/config.json", "/tmp/x", "relative"} {
		_, err := g.agent.CopyFile(ctx, &kata.CopyFileRequest{Path: p, FileSize: 3, Data: []byte("bad")})
		wantCode(t, err, codes.InvalidArgument, "path")
	}
	// A symlink planted by the host, pointing at the guest's /etc: it
	// resolves within the root, as it would in the container.
	if err := g.upload(t, root+"/evil", []byte("/etc"), sIFLNK|0o777, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := g.upload(t, root+"/evil/passwd", []byte("planted\n"), sIFREG|0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	if out, _ := g.run(t, "it-cp", "planted", "cat", "/etc/passwd"); out != "planted\n" {
		t.Errorf("the container's /etc/passwd: %q", out)
	}
	if got := g.sh(t, "ls -A /etc | md5sum; test -e /etc/passwd && echo planted in the guest; true"); got != guestEtc {
		t.Errorf("the guest's /etc changed: %s, was %s", got, guestEtc)
	}
	// A size that does not match, and a gap: refused, nothing left.
	_, err = g.agent.CopyFile(ctx, &kata.CopyFileRequest{Path: root + "/etc/short", FileSize: 3, Data: []byte("toolong")})
	wantCode(t, err, codes.InvalidArgument, "data")
	first := &kata.CopyFileRequest{Path: root + "/etc/gap", FileSize: 10, Data: []byte("01234")}
	if _, err := g.agent.CopyFile(ctx, first); err != nil {
		t.Fatal(err)
	}
	_, err = g.agent.CopyFile(ctx, &kata.CopyFileRequest{Path: root + "/etc/gap", FileSize: 10, Offset: 7, Data: []byte("789")})
	wantCode(t, err, codes.InvalidArgument, "offset")
	if got := g.sh(t, "ls -A "+root+"/etc"); got != "greeting\npasswd" {
		t.Errorf("%s/etc after refused copies: %q", root, got)
	}
}

// testContainerSpec runs containers asking for an rlimit, fewer
// capabilities, a tmpfs storage, a user namespace and hooks, and checks
// each from inside; bad ones are refused naming the field.
func (g *guest) testContainerSpec(t *testing.T) {
	ctx := g.ctx(t)
	const tmp = "/run/kata-containers/it-lim-tmp"
	spec := kataSpec("sleep", "1000")
	spec.Process.Rlimits = []*kata.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 77, Hard: 88}}
	// Docker's default set without CAP_CHOWN.
	caps := []string{"CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
		"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	spec.Process.Capabilities = &kata.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	spec.Mounts = append(spec.Mounts, &kata.Mount{Destination: "/tmp", Type: "bind", Source: tmp, Options: []string{"rbind", "rw"}})
	// Hooks run in the guest with the container's state on stdin.
	spec.Hooks = &kata.Hooks{
		CreateRuntime: []*kata.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > /run/it-hook-created"}, Timeout: 10}},
		Poststop:      []*kata.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > /run/it-hook-stopped"}, Timeout: 10}},
	}
	tmpfs := &kata.Storage{Driver: "ephemeral", MountPoint: tmp, Options: []string{"size=1m"}}
	g.create(t, "it-lim", spec, kataRootfs(), tmpfs)
	out, st := g.run(t, "it-lim", "check", "sh", "-c",
		"grep 'open files' /proc/1/limits | awk '{print $4; print $5}'; touch /tmp/f; chown 1 /tmp/f 2>&1; dd if=/dev/zero of=/tmp/big bs=64k count=100 2>&1 | head -1; cat /proc/mounts | grep ' /tmp '")
	if st != 0 {
		t.Fatalf("in the container: status %d\n%s", st, out)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 5 || lines[0] != "77" || lines[1] != "88" || !strings.Contains(lines[2], "Operation not permitted") ||
		!strings.Contains(out, "No space left on device") || !strings.Contains(out, "tmpfs /tmp tmpfs") {
		t.Errorf("rlimit 77/88, no CAP_CHOWN, a 1 MiB tmpfs on /tmp; got:\n%s", out)
	}
	if got := g.sh(t, "cat /run/it-hook-created"); !strings.Contains(got, `"id":"it-lim"`) {
		t.Errorf("createRuntime hook's stdin: %q", got)
	}
	if _, err := g.agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: "it-lim"}); err != nil {
		t.Fatal(err)
	}
	if got := g.sh(t, "cat /run/it-hook-stopped; rm -f /run/it-hook-*"); !strings.Contains(got, `"id":"it-lim"`) {
		t.Errorf("poststop hook's stdin: %q", got)
	}

	// A user namespace: root inside is 100000 outside.
	spec = kataSpec("sleep", "1000")
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, &kata.LinuxNamespace{Type: "user"})
	spec.Linux.UIDMappings = []*kata.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	spec.Linux.GIDMappings = []*kata.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	g.create(t, "it-userns", spec, kataRootfs())
	if out, st := g.run(t, "it-userns", "map", "cat", "/proc/self/uid_map"); st != 0 || strings.Join(strings.Fields(out), " ") != "0 100000 65536" {
		t.Errorf("uid_map in a user namespace: %d %q", st, out)
	}
	if got := g.sh(t, "ps -o user,args | grep 'sleep 1000' | grep -v grep | head -1"); !strings.HasPrefix(got, "100000") {
		t.Errorf("the container's init seen from the guest: %q; want user 100000", got)
	}

	for _, tc := range []struct {
		words []string
		edit  func(*kata.Spec)
	}{
		{[]string{"Rlimits[0].Type"}, func(s *kata.Spec) { s.Process.Rlimits = []*kata.POSIXRlimit{{Type: "RLIMIT_WINGS"}} }},
		{[]string{"Rlimits[0].Soft"}, func(s *kata.Spec) { s.Process.Rlimits = []*kata.POSIXRlimit{{Type: "RLIMIT_CORE", Soft: 2, Hard: 1}} }},
		{[]string{"Capabilities.Bounding[0]"}, func(s *kata.Spec) {
			s.Process.Capabilities = &kata.LinuxCapabilities{Bounding: []string{"CAP_TELEPORT"}}
		}},
		{[]string{"Mounts[2].source", "/proc"}, func(s *kata.Spec) {
			s.Mounts = append(s.Mounts, &kata.Mount{Destination: "/vmproc", Type: "bind", Source: "/proc"})
		}},
		{[]string{"Mounts[2].source", "/sys"}, func(s *kata.Spec) {
			s.Mounts = append(s.Mounts, &kata.Mount{Destination: "/vmsys", Type: "bind", Source: "/sys", Options: []string{"rbind"}})
		}},
		{[]string{"Root.Path"}, func(s *kata.Spec) { s.Root = nil }},
		{[]string{"root.path", "no such file"}, func(s *kata.Spec) { s.Root.Path = "/run/kata-containers/rootfs/nowhere" }},
	} {
		spec := kataSpec("true")
		tc.edit(spec)
		_, err := g.agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: "it-bad", Storages: []*kata.Storage{kataRootfs()}, OCI: spec})
		wantCode(t, err, codes.InvalidArgument, tc.words...)
	}
}

// testDisk makes an ext4 filesystem smaller than vdb, mounts it as a
// block storage named by its position (microvm), passes vdb into a
// container as a device, and grows the filesystem with ResizeVolume.
func (g *guest) testDisk(t *testing.T) {
	const mnt = "/run/kata-containers/it-blk"
	ctx := g.ctx(t)
	g.sh(t, "/sbin/mkfs.ext4 -q -F /dev/vdb 16M")
	spec := kataSpec("sleep", "1000")
	spec.Mounts = append(spec.Mounts, &kata.Mount{Destination: "/root", Type: "bind", Source: mnt, Options: []string{"rbind", "rw"}})
	spec.Linux.Devices = []*kata.LinuxDevice{{Path: "/dev/xvdb", Type: "b", Major: 202, Minor: 16, FileMode: 0o660}}
	spec.Linux.Resources = &kata.LinuxResources{Devices: []*kata.LinuxDeviceCgroup{{Allow: true, Type: "b", Major: 202, Minor: 16, Access: "r"}}}
	if _, err := g.agent.CreateContainer(ctx, &kata.CreateContainerRequest{
		ContainerId: "it-blk", ExecId: "it-blk", OCI: spec,
		Storages: []*kata.Storage{kataRootfs(), {Driver: "blk", Source: "01", Fstype: "ext4", MountPoint: mnt}},
		Devices:  []*kata.Device{{Type: "mmioblk", VmPath: "/dev/vdb", ContainerPath: "/dev/xvdb"}},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.agent.RemoveContainer(toVM(testContext(t, 60*time.Second), g.vm), &kata.RemoveContainerRequest{ContainerId: "it-blk"})
	})
	if _, err := g.agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: "it-blk"}); err != nil {
		t.Fatal(err)
	}
	guestNums := g.sh(t, "stat -c '%t %T' /dev/vdb")
	out, st := g.run(t, "it-blk", "dev", "sh", "-c", "stat -c '%t %T' /dev/xvdb; dd if=/dev/xvdb bs=512 count=1 2>/dev/null | wc -c; echo x > /root/f && cat /root/f")
	if st != 0 || out != guestNums+"\n512\nx\n" {
		t.Errorf("in the container: %d %q; want the guest's numbers %q, a readable device, a writable disk", st, out, guestNums)
	}
	stats := func() uint64 {
		resp, err := g.agent.GetVolumeStats(ctx, &kata.VolumeStatsRequest{VolumeGuestPath: mnt})
		if err != nil || len(resp.GetUsage()) != 2 || resp.GetUsage()[0].GetUnit() != kata.VolumeUsage_BYTES {
			t.Fatalf("GetVolumeStats: %v, %v", resp, err)
		}
		return resp.GetUsage()[0].GetTotal()
	}
	// The guest's own statfs agrees.
	f := strings.Fields(g.sh(t, "stat -f -c '%S %b %f' "+mnt))
	bs, _ := strconv.ParseUint(f[0], 10, 64)
	blocks, _ := strconv.ParseUint(f[1], 10, 64)
	before := stats()
	if before != bs*blocks {
		t.Errorf("GetVolumeStats total %d; statfs in the guest says %d", before, bs*blocks)
	}
	_, err := g.agent.ResizeVolume(ctx, &kata.ResizeVolumeRequest{VolumeGuestPath: mnt, Size: 1 << 30})
	wantCode(t, err, codes.FailedPrecondition, "grow the device first")
	if _, err := g.agent.ResizeVolume(ctx, &kata.ResizeVolumeRequest{VolumeGuestPath: mnt}); err != nil {
		t.Fatal(err)
	}
	if after := stats(); after <= before || after < 56<<20 {
		t.Errorf("after ResizeVolume: %d bytes, was %d; want the 64 MiB disk's", after, before)
	}
}

// testSwap turns swap on on vda, blank: the agent writes its header.
func (g *guest) testSwap(t *testing.T) {
	ctx := g.ctx(t)
	for _, bad := range [][]uint32{nil, {40}, {1, 2, 3, 4, 5, 6, 7, 8, 9}} {
		_, err := g.agent.AddSwap(ctx, &kata.AddSwapRequest{PCIPath: bad})
		wantCode(t, err, codes.InvalidArgument, "PCIPath")
	}
	// vdb holds a filesystem (testDisk): left alone.
	_, err := g.agent.AddSwap(ctx, &kata.AddSwapRequest{PCIPath: []uint32{1}})
	wantCode(t, err, codes.FailedPrecondition, "/dev/vdb")
	if _, err := g.agent.AddSwap(ctx, &kata.AddSwapRequest{PCIPath: []uint32{0}}); err != nil {
		t.Fatal(err)
	}
	if got := g.sh(t, "grep '^/dev/vda ' /proc/swaps | awk '{print $2, $3}'"); got != "partition 32764" {
		t.Errorf("/proc/swaps: %q, want vda as a 32 MiB partition", got)
	}
	_, err = g.agent.AddSwap(ctx, &kata.AddSwapRequest{PCIPath: []uint32{0}})
	wantCode(t, err, codes.AlreadyExists, "/dev/vda")
}

// testDateTime sets the guest's clock ahead and back to the host's.
func (g *guest) testDateTime(t *testing.T) {
	ctx := g.ctx(t)
	const future = 1893456000 // 2030-01-01
	t.Cleanup(func() {
		now := time.Now()
		if _, err := g.agent.SetGuestDateTime(toVM(testContext(t, 30*time.Second), g.vm),
			&kata.SetGuestDateTimeRequest{Sec: now.Unix(), Usec: int64(now.Nanosecond() / 1000)}); err != nil {
			t.Errorf("restore the guest's clock: %v", err)
		}
		if got, _ := strconv.ParseInt(g.sh(t, "date +%s"), 10, 64); got > time.Now().Unix()+60 {
			t.Errorf("the guest's clock after the restore: %d", got)
		}
	})
	for _, bad := range []*kata.SetGuestDateTimeRequest{{Sec: -1}, {Sec: future, Usec: 1_000_000}, {Sec: 1 << 40}, {}} {
		_, err := g.agent.SetGuestDateTime(ctx, bad)
		wantCode(t, err, codes.InvalidArgument)
	}
	if _, err := g.agent.SetGuestDateTime(ctx, &kata.SetGuestDateTimeRequest{Sec: future, Usec: 500000}); err != nil {
		t.Fatal(err)
	}
	if got, _ := strconv.ParseInt(g.sh(t, "date +%s"), 10, 64); got < future || got > future+60 {
		t.Errorf("the guest's clock: %d, want about %d", got, future)
	}
}

// testOnline takes CPU 1 and a memory block offline in the guest and has
// OnlineCPUMem bring them back.
func (g *guest) testOnline(t *testing.T) {
	ctx := g.ctx(t)
	g.sh(t, "echo 0 > /sys/devices/system/cpu/cpu1/online")
	if got := g.sh(t, "cat /sys/devices/system/cpu/online"); got != "0" {
		t.Fatalf("online CPUs after taking cpu1 offline: %q", got)
	}
	if _, err := g.agent.OnlineCPUMem(ctx, &kata.OnlineCPUMemRequest{Wait: true, NbCpus: 1, CpuOnly: true}); err != nil {
		t.Fatal(err)
	}
	if got := g.sh(t, "cat /sys/devices/system/cpu/online"); got != "0-1" {
		t.Errorf("online CPUs after OnlineCPUMem: %q", got)
	}
	_, err := g.agent.OnlineCPUMem(ctx, &kata.OnlineCPUMemRequest{NbCpus: 100000})
	wantCode(t, err, codes.InvalidArgument, "nb_cpus")
	// The last memory block that the kernel lets go of, if any does.
	block := g.sh(t, `for n in $(ls /sys/devices/system/memory | sed -n 's/^memory//p' | sort -n -r); do
  b=/sys/devices/system/memory/memory$n; if echo 0 > $b/online 2>/dev/null; then echo $b; break; fi; done; true`)
	if block == "" {
		t.Log("no memory block could be taken offline in this guest; memory onlining not exercised")
		return
	}
	if _, err := g.agent.OnlineCPUMem(ctx, &kata.OnlineCPUMemRequest{Wait: true}); err != nil {
		t.Fatal(err)
	}
	if got := g.sh(t, "cat "+block+"/online"); got != "1" {
		t.Errorf("%s/online after OnlineCPUMem: %q", block, got)
	}
}
