package maitred

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/guest/storage/storagetest"
)

const mib = 1 << 20

// statefulMount returns what is mounted on m's stateful mount point.
func statefulMount(t *testing.T, m *Maitred) *mountinfo.Info {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(m.cfg.Storage.MountPoint()))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		return nil
	}
	return ms[len(ms)-1]
}

// unmountStateful unmounts the stateful disk when t ends, before its loop
// device goes: register it after making the disk.
func unmountStateful(t *testing.T, m *Maitred) {
	t.Cleanup(func() {
		waitResizeDone(t, m)
		m.cfg.Storage.Close()
		unix.Unmount(m.cfg.Storage.MountPoint(), unix.MNT_DETACH)
	})
}

func waitResizeDone(t *testing.T, m *Maitred) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := m.ResizeStatus()
		if err != nil || !st.Running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("resize still running after 60s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeProgram puts an executable script named name in a directory at the
// front of PATH.
func fakeProgram(t *testing.T, name, script string) {
	t.Helper()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
}

// TestStartTerminaWithoutTremplin: the blank disk is formatted and
// mounted, and the answer says tremplin is missing; the calls on the
// stateful disk then act on it.
func TestStartTerminaWithoutTremplin(t *testing.T) {
	storagetest.NeedDisks(t)
	if p, err := exec.LookPath(Tremplin); err == nil {
		t.Skipf("this host has a tremplin (%s)", p)
	}
	dev, _ := storagetest.LoopDisk(t, 64*mib, nil)
	m, s := newTest(t, Config{})
	unmountStateful(t, m)
	ctx := context.Background()

	_, err := s.StartTermina(ctx, &vmtools.StartTerminaRequest{StatefulDevice: dev, LxdIpv4Subnet: "100.115.92.192/28"})
	wantCode(t, err, codes.FailedPrecondition, "tremplin")
	wantCode(t, err, codes.FailedPrecondition, "is mounted on "+m.cfg.Storage.MountPoint())
	if mt := statefulMount(t, m); mt == nil || mt.FSType != "ext4" || mt.Source != dev {
		t.Fatalf("stateful mount: %+v, want %s as ext4", mt, dev)
	}

	var st unix.Statfs_t
	unix.Statfs(m.cfg.Storage.MountPoint(), &st)
	space, err := s.GetAvailableSpace(ctx, empty)
	if err != nil || space.GetAvailableSpace() != st.Bavail*uint64(st.Bsize) {
		t.Errorf("GetAvailableSpace = %v, %v; statfs says %d", space, err, st.Bavail*uint64(st.Bsize))
	}
	status, err := s.GetResizeStatus(ctx, empty)
	if err != nil || status.GetResizeInProgress() || status.GetCurrentSize() != 64*mib {
		t.Errorf("GetResizeStatus = %v, %v", status, err)
	}
	bounds, err := s.GetResizeBounds(ctx, empty)
	if err != nil || bounds.GetMinimumSize() == 0 || bounds.GetMinimumSize() >= 64*mib {
		t.Fatalf("GetResizeBounds = %v, %v", bounds, err)
	}

	// The balloon leaves the guest half its free space.
	free := int64(st.Bavail) * st.Bsize
	bal, err := s.UpdateStorageBalloon(ctx, &vmtools.UpdateStorageBalloonRequest{
		State: vmtools.StatefulDiskSpaceState_DISK_LOW, FreeSpaceBytes: 1<<30 + free/2,
	})
	if err != nil || bal.GetResult() != vmtools.UpdateStorageBalloonResult_SUCCESS {
		t.Fatalf("UpdateStorageBalloon = %v, %v", bal, err)
	}
	unix.Statfs(m.cfg.Storage.MountPoint(), &st)
	if got := int64(st.Bavail) * st.Bsize; got > free/2 || got < free/2-64<<10 {
		t.Errorf("guest free %d after the balloon, want about %d", got, free/2)
	}
	_, err = s.UpdateStorageBalloon(ctx, &vmtools.UpdateStorageBalloonRequest{FreeSpaceBytes: -5})
	wantCode(t, err, codes.InvalidArgument, "free_space_bytes")

	// Below the minimum: FAILED, nothing runs.
	resp, err := s.ResizeFilesystem(ctx, &vmtools.ResizeFilesystemRequest{Size: bounds.GetMinimumSize() - 4096})
	if err != nil || resp.GetStatus() != vmtools.ResizeFilesystemResponse_FAILED {
		t.Errorf("resize below the minimum = %v, %v; want FAILED", resp, err)
	}
	_, err = s.ResizeFilesystem(ctx, &vmtools.ResizeFilesystemRequest{})
	wantCode(t, err, codes.InvalidArgument, "size")
	// Shrinking, polled until done.
	resp, err = s.ResizeFilesystem(ctx, &vmtools.ResizeFilesystemRequest{Size: 48 * mib})
	if err != nil || resp.GetStatus() != vmtools.ResizeFilesystemResponse_STARTED {
		t.Fatalf("resize to 48 MiB = %v, %v; want STARTED", resp, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, err = s.GetResizeStatus(ctx, empty)
		if err != nil {
			t.Fatal(err)
		}
		if !status.GetResizeInProgress() {
			break
		}
		if status.GetCurrentSize() != 64*mib || status.GetTargetSize() != 48*mib {
			t.Errorf("status while resizing: %v", status)
		}
		if time.Now().After(deadline) {
			t.Fatal("resize did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if status.GetCurrentSize() != 48*mib || status.GetTargetSize() != 48*mib {
		t.Errorf("status after resizing: %v", status)
	}
	if mt := statefulMount(t, m); mt == nil || mt.Source != dev {
		t.Errorf("not mounted again after shrinking: %+v", mt)
	}
	// A second StartTermina finds it mounted.
	_, err = s.StartTermina(ctx, &vmtools.StartTerminaRequest{StatefulDevice: dev})
	wantCode(t, err, codes.FailedPrecondition, "tremplin")
}

// TestStartTerminaStartsTremplin: with a tremplin in the image it starts,
// respawning, with LXD's environment on the stateful disk, and the answer
// reports the mount. A disk that mounted only once repaired is
// PARTIAL_DATA_LOSS.
func TestStartTerminaStartsTremplin(t *testing.T) {
	storagetest.NeedDisks(t)
	if p, err := exec.LookPath(LXCFS); err == nil {
		t.Skipf("this host has an lxcfs (%s), which the test would start", p)
	}
	record := filepath.Join(t.TempDir(), "tremplin")
	fakeProgram(t, Tremplin, `echo "$* LXD_DIR=$LXD_DIR LXD_CONF=$LXD_CONF LXD_UNPRIVILEGED_ONLY=$LXD_UNPRIVILEGED_ONLY" >> `+record+"\n")
	dev, _ := storagetest.LoopDisk(t, 64*mib, nil)
	storagetest.Run(t, "mkfs.ext4", "-q", "-T", "default", "-O", "metadata_csum,64bit", dev)
	// A group descriptor's checksum broken: it will not mount until
	// e2fsck has repaired it.
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xde, 0xad}, 4096+0x1e)
	f.Close()
	m, s := newTest(t, Config{RespawnLimit: 1})
	unmountStateful(t, m)

	resp, err := s.StartTermina(context.Background(), &vmtools.StartTerminaRequest{
		StatefulDevice: dev, LxdIpv4Subnet: "100.115.92.192/28",
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMountResult() != vmtools.StartTerminaResponse_PARTIAL_DATA_LOSS || !resp.GetFreeBytesHasValue() || resp.GetFreeBytes() <= 0 {
		t.Errorf("StartTermina = %v", resp)
	}
	mp := m.cfg.Storage.MountPoint()
	want := "-lxd_subnet 100.115.92.192/28 LXD_DIR=" + mp + "/lxd LXD_CONF=" + mp + "/lxd_conf LXD_UNPRIVILEGED_ONLY=true\n"
	waitFor(t, func() bool { b, _ := os.ReadFile(record); return len(b) > 0 })
	if b, _ := os.ReadFile(record); !strings.HasPrefix(string(b), want) {
		t.Errorf("tremplin ran as %q, want %q", b, want)
	}

	// Again, the disk sound and privileged containers allowed.
	os.Remove(record)
	resp, err = s.StartTermina(context.Background(), &vmtools.StartTerminaRequest{StatefulDevice: dev, AllowPrivilegedContainers: true})
	if err != nil || resp.GetMountResult() != vmtools.StartTerminaResponse_SUCCESS {
		t.Fatalf("second StartTermina = %v, %v", resp, err)
	}
	waitFor(t, func() bool { b, _ := os.ReadFile(record); return len(b) > 0 })
	if b, _ := os.ReadFile(record); !strings.HasSuffix(strings.SplitN(string(b), "\n", 2)[0], "LXD_UNPRIVILEGED_ONLY=") {
		t.Errorf("tremplin ran as %q, want no LXD_UNPRIVILEGED_ONLY", b)
	}
}

func TestStartTerminaRefuses(t *testing.T) {
	_, s := newTest(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		req     *vmtools.StartTerminaRequest
		code    codes.Code
		mention string
	}{
		{&vmtools.StartTerminaRequest{LxdIpv4Subnet: "not a subnet"}, codes.InvalidArgument, "lxd_ipv4_subnet"},
		{&vmtools.StartTerminaRequest{LxdIpv4Subnet: "fd00::/64"}, codes.InvalidArgument, "lxd_ipv4_subnet"},
		{&vmtools.StartTerminaRequest{StatefulDevice: "vdb"}, codes.InvalidArgument, "stateful_device"},
		{&vmtools.StartTerminaRequest{StatefulDevice: "/dev/cabin-no-such-disk"}, codes.NotFound, "/dev/cabin-no-such-disk"},
		// The test's VM has no virtio disk.
		{&vmtools.StartTerminaRequest{}, codes.FailedPrecondition, "no stateful disk"},
	} {
		_, err := s.StartTermina(ctx, tc.req)
		wantCode(t, err, tc.code, tc.mention)
	}
	// Before StartTermina, the stateful disk's calls say what is missing.
	for name, call := range map[string]func() error{
		"ResizeFilesystem": func() error {
			_, err := s.ResizeFilesystem(ctx, &vmtools.ResizeFilesystemRequest{Size: 1 << 30})
			return err
		},
		"GetResizeStatus":   func() error { _, err := s.GetResizeStatus(ctx, empty); return err },
		"GetResizeBounds":   func() error { _, err := s.GetResizeBounds(ctx, empty); return err },
		"GetAvailableSpace": func() error { _, err := s.GetAvailableSpace(ctx, empty); return err },
		"UpdateStorageBalloon": func() error {
			_, err := s.UpdateStorageBalloon(ctx, &vmtools.UpdateStorageBalloonRequest{FreeSpaceBytes: 1 << 40})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) { wantCode(t, call(), codes.FailedPrecondition, "StartTermina") })
	}
}

func TestConfigureContainerGuest(t *testing.T) {
	m, s := newTest(t, Config{RespawnLimit: 1})
	ctx := context.Background()
	for _, token := range []string{"", "a\x00b", strings.Repeat("t", 4097)} {
		_, err := s.ConfigureContainerGuest(ctx, &vmtools.ConfigureContainerGuestRequest{ContainerToken: token})
		wantCode(t, err, codes.InvalidArgument, "container_token")
	}

	// No garcon in the image: the files are written, and the answer says
	// what is missing.
	_, err := s.ConfigureContainerGuest(ctx, &vmtools.ConfigureContainerGuestRequest{ContainerToken: "tok-1", VmUsername: "ann"})
	wantCode(t, err, codes.FailedPrecondition, "garcon")
	if b, _ := os.ReadFile(filepath.Join(m.cfg.DevDir, ".container_token")); string(b) != "tok-1" {
		t.Errorf("token file holds %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(m.cfg.DevDir, ".host_ip")); l != filepath.Join(m.cfg.RunDir, "host_ip") {
		t.Errorf(".host_ip -> %q", l)
	}

	// With garcon, it is started, and the token replaced.
	marker := filepath.Join(t.TempDir(), "garcon")
	init := filepath.Join(m.cfg.EtcDir, "init.d", "cros-garcon")
	os.MkdirAll(filepath.Dir(init), 0o755)
	os.WriteFile(init, []byte("#!/bin/sh\necho \"$@\" >> "+marker+"\n"), 0o755)
	if _, err := s.ConfigureContainerGuest(ctx, &vmtools.ConfigureContainerGuestRequest{ContainerToken: "tok-2"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { b, _ := os.ReadFile(marker); return len(b) > 0 })
	if b, _ := os.ReadFile(marker); !strings.HasPrefix(string(b), "daemon\n") {
		t.Errorf("garcon ran with %q, want daemon", b)
	}
	if b, _ := os.ReadFile(filepath.Join(m.cfg.DevDir, ".container_token")); string(b) != "tok-2" {
		t.Errorf("token file holds %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(m.cfg.DevDir, ".*.tmp")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
