package kata

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// loopEnv passes the loop device the parent made to the child.
const loopEnv = "CABIN_KATA_LOOP"

// TestRootVolumes mounts a real ext4 disk (a loop device) as a block
// storage and a tmpfs, reads their usage, grows the disk's filesystem
// and resizes the tmpfs, as root in a child of its own (see runChild).
func TestRootVolumes(t *testing.T) {
	subtests := []string{"stats", "grow", "ephemeral", "bind"}
	if inChild("TestRootVolumes") {
		childSetup(t)
		testRootVolumes(t, os.Getenv(loopEnv))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a loop device and mounts it, in a mount namespace of its own")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "resize2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	// A 32 MiB disk holding a 16 MiB filesystem, for the child to grow.
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	runChild(t, "TestRootVolumes", subtests, loopEnv+"="+dev)
}

// haveCap tells whether this process has capability c in its effective
// set.
func haveCap(t *testing.T, c uint) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<c) != 0
		}
	}
	return false
}

func testRootVolumes(t *testing.T, dev string) {
	dir := testDir(t)
	disk, eph := filepath.Join(dir, "disk"), filepath.Join(dir, "eph")
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(), RuntimeRoot: t.TempDir()})
	ctx := t.Context()
	if _, err := c.CreateSandbox(ctx, &pb.CreateSandboxRequest{Storages: []*pb.Storage{
		{Driver: "blk", Source: dev, Fstype: "ext4", Options: []string{"nodev", "errors=remount-ro"}, MountPoint: disk},
		{Driver: "ephemeral", MountPoint: eph, Options: []string{"size=2m", "nosuid"}},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}); err != nil {
			t.Error(err)
		}
	})
	if fstype, opts := mountedAt(t, disk); fstype != "ext4" || !strings.Contains(opts, "nodev") {
		t.Fatalf("%s: %q %q", disk, fstype, opts)
	}
	stats := func(t *testing.T, p string) (bytes, inodes *pb.VolumeUsage) {
		t.Helper()
		resp, err := c.GetVolumeStats(ctx, &pb.VolumeStatsRequest{VolumeGuestPath: p})
		if err != nil {
			t.Fatal(err)
		}
		if vc := resp.GetVolumeCondition(); vc.GetAbnormal() || vc.GetMessage() != "OK" || len(resp.GetUsage()) != 2 {
			t.Fatalf("GetVolumeStats(%s) = %v", p, resp)
		}
		return resp.GetUsage()[0], resp.GetUsage()[1]
	}
	t.Run("stats", func(t *testing.T) {
		os.WriteFile(filepath.Join(eph, "f"), make([]byte, 512<<10), 0o644)
		b, i := stats(t, eph)
		var st unix.Statfs_t
		unix.Statfs(eph, &st)
		if b.GetUnit() != pb.VolumeUsage_BYTES || b.GetTotal() != 2<<20 || b.GetAvailable() != st.Bfree*uint64(st.Bsize) ||
			b.GetUsed() != b.GetTotal()-b.GetAvailable() || b.GetUsed() < 512<<10 {
			t.Errorf("bytes of %s: %v; statfs %+v", eph, b, st)
		}
		if i.GetUnit() != pb.VolumeUsage_INODES || i.GetTotal() != st.Files || i.GetAvailable() != st.Ffree || i.GetUsed() != st.Files-st.Ffree {
			t.Errorf("inodes of %s: %v; statfs %+v", eph, i, st)
		}
		_, err := c.GetVolumeStats(ctx, &pb.VolumeStatsRequest{VolumeGuestPath: dir + "/none"})
		wantCode(t, "missing", err, codes.NotFound, "volume_guest_path "+dir+"/none")
		for _, bad := range []string{"", "rel", dir + "/../x"} {
			_, err := c.GetVolumeStats(ctx, &pb.VolumeStatsRequest{VolumeGuestPath: bad})
			wantCode(t, bad, err, codes.InvalidArgument, "volume_guest_path: ")
		}
	})
	t.Run("grow", func(t *testing.T) {
		before, _ := stats(t, disk)
		_, err := c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: disk, Size: 8 << 20})
		wantCode(t, "shrink", err, codes.InvalidArgument, "size: ")
		_, err = c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: disk, Size: 64 << 20})
		wantCode(t, "beyond the disk", err, codes.FailedPrecondition, "size: ")
		_, err = c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: eph})
		wantCode(t, "tmpfs", err, codes.FailedPrecondition, "volume_guest_path "+eph+": a tmpfs filesystem")
		_, err = c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: dir})
		wantCode(t, "no mount", err, codes.NotFound, "volume_guest_path "+dir)
		if after, _ := stats(t, disk); after.GetTotal() != before.GetTotal() {
			t.Fatalf("refused resizes changed the size: %d, was %d", after.GetTotal(), before.GetTotal())
		}
		if !haveCap(t, unix.CAP_SYS_RESOURCE) {
			// Online growth needs it (the agent has it, as PID 1):
			// resize2fs's refusal comes back.
			_, err := c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: disk, Size: 24 << 20})
			wantCode(t, "without CAP_SYS_RESOURCE", err, codes.Unknown, "volume_guest_path "+disk+": resize2fs "+dev)
			t.Log("no CAP_SYS_RESOURCE here: growth is checked in a VM (integration/kata_guest_test.go)")
			return
		}
		if _, err := c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: disk, Size: 24 << 20}); err != nil {
			t.Fatal(err)
		}
		mid, _ := stats(t, disk)
		if _, err := c.ResizeVolume(ctx, &pb.ResizeVolumeRequest{VolumeGuestPath: disk}); err != nil {
			t.Fatal(err)
		}
		after, _ := stats(t, disk)
		if !(before.GetTotal() < mid.GetTotal() && mid.GetTotal() < after.GetTotal() && after.GetTotal() > 28<<20) {
			t.Errorf("size of %s: %d, then %d (24 MiB asked), then %d (the whole 32 MiB disk)", disk, before.GetTotal(), mid.GetTotal(), after.GetTotal())
		}
	})
	t.Run("ephemeral", func(t *testing.T) {
		for _, tc := range []struct {
			st     *pb.Storage
			code   codes.Code
			prefix string
		}{
			{&pb.Storage{Driver: "local", MountPoint: eph}, codes.InvalidArgument, "storages[0].driver: "},
			{&pb.Storage{Driver: "ephemeral", MountPoint: disk, Options: []string{"size=1m"}}, codes.NotFound, "storages[0].mount_point: "},
			{&pb.Storage{Driver: "ephemeral", MountPoint: eph, Options: []string{"size=1m,mode=777"}}, codes.InvalidArgument, "storages[0].options: "},
			{&pb.Storage{Driver: "ephemeral", MountPoint: "/etc", Options: []string{"size=1m"}}, codes.InvalidArgument, "storages[0].mount_point: "},
		} {
			_, err := c.UpdateEphemeralMounts(ctx, &pb.UpdateEphemeralMountsRequest{Storages: []*pb.Storage{tc.st}})
			wantCode(t, tc.prefix, err, tc.code, tc.prefix)
		}
		if b, _ := stats(t, eph); b.GetTotal() != 2<<20 {
			t.Fatalf("refused updates changed the size: %d", b.GetTotal())
		}
		if _, err := c.UpdateEphemeralMounts(ctx, &pb.UpdateEphemeralMountsRequest{Storages: []*pb.Storage{
			{Driver: "ephemeral", MountPoint: eph, Options: []string{"remount", "size=3m"}},
		}}); err != nil {
			t.Fatal(err)
		}
		if b, _ := stats(t, eph); b.GetTotal() != 3<<20 {
			t.Errorf("size after the update: %d, want 3 MiB", b.GetTotal())
		}
		// Its flags stay; the file written before is there.
		if _, opts := mountedAt(t, eph); !strings.Contains(opts, "nosuid") {
			t.Errorf("options after the update: %s", opts)
		}
		if _, err := os.Stat(filepath.Join(eph, "f")); err != nil {
			t.Error(err)
		}
		if _, err := c.RemoveStaleVirtiofsShareMounts(ctx, &pb.RemoveStaleVirtiofsShareMountsRequest{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("bind", func(t *testing.T) {
		// The tmpfs bound read-only elsewhere, for a container.
		bound := filepath.Join(dir, "bound")
		for _, tc := range []struct {
			st     *pb.Storage
			code   codes.Code
			prefix string
		}{
			{&pb.Storage{Driver: "bind", Source: "/etc", MountPoint: bound}, codes.InvalidArgument, "storages[0].source: "},
			{&pb.Storage{Driver: "bind", Source: dir + "/../x", MountPoint: bound}, codes.InvalidArgument, "storages[0].source: "},
			{&pb.Storage{Driver: "bind", Source: eph, Options: []string{"size=1m"}, MountPoint: bound}, codes.InvalidArgument, "storages[0].options: "},
			{&pb.Storage{Driver: "bind", Source: dir + "/none", MountPoint: bound}, codes.NotFound, "storages[0].source: "},
		} {
			_, err := c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: minimalSpec(), Storages: []*pb.Storage{tc.st}})
			wantCode(t, tc.prefix, err, tc.code, tc.prefix)
		}
		// Through a symlink: refused, as mount points are.
		link := filepath.Join(eph, "link")
		os.Symlink("/etc", link)
		_, err := c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c1", OCI: minimalSpec(),
			Storages: []*pb.Storage{{Driver: "watchable-bind", Source: link, MountPoint: bound}}})
		wantCode(t, "symlink", err, codes.InvalidArgument, "storages[0].source: ")
		if _, err := os.Lstat(bound); !os.IsNotExist(err) {
			t.Errorf("%s after refused binds: %v", bound, err)
		}
		// One that mounts, through the storage table itself; the agent's
		// own directories stay out of reach.
		agent := filepath.Join(dir, "agent")
		m := newMounts(testLog(), []string{agent}, func(context.Context) error { return nil })
		_, err = m.acquire(ctx, "storages", []Storage{{Driver: "bind", Source: agent, MountPoint: bound}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "storages[0].source: ") {
			t.Errorf("a bind of the agent's own directory: %v", err)
		}
		points, err := m.acquire(ctx, "storages", []Storage{{Driver: "bind", Source: eph, Options: []string{"ro", "nodev"}, MountPoint: bound}})
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(bound, "f")); err != nil || len(b) != 512<<10 {
			t.Errorf("the bound tmpfs's file: %d bytes, %v", len(b), err)
		}
		if err := os.WriteFile(filepath.Join(bound, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("a write through the read-only bind: %v", err)
		}
		if _, err := m.release(points); err != nil {
			t.Fatal(err)
		}
		if fstype, _ := mountedAt(t, bound); fstype != "" {
			t.Errorf("%s still mounted", bound)
		}
	})
}
