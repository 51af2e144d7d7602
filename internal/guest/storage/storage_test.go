package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/storage/storagetest"
	"github.com/cabinvm/cabin/internal/reaper"
)

const mib = 1 << 20

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	r := reaper.New(false, testLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// newTest returns a Stateful whose mount point is a temporary directory,
// with no virtio disks to find unless the test makes some.
func newTest(t *testing.T, cfg Config) *Stateful {
	t.Helper()
	cfg.Log = testLog()
	cfg.Reaper = startReaper(t)
	if cfg.MountPoint == "" {
		cfg.MountPoint = filepath.Join(t.TempDir(), "stateful")
	}
	if cfg.SysBlock == "" {
		cfg.SysBlock = t.TempDir()
	}
	s := New(cfg)
	t.Cleanup(func() {
		waitResize(t, s)
		s.Close()
		unix.Unmount(cfg.MountPoint, unix.MNT_DETACH)
	})
	return s
}

func wantKind(t *testing.T, err, kind error, mention string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v: want %v", err, kind)
	}
	if !strings.Contains(err.Error(), mention) {
		t.Fatalf("error %q does not mention %q", err, mention)
	}
}

func mountAt(t *testing.T, dir string) *mountinfo.Info {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		return nil
	}
	return ms[len(ms)-1]
}

func statfs(t *testing.T, dir string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func fsBytes(t *testing.T, dev string) uint64 {
	t.Helper()
	sb, err := readSuperblock(dev)
	if err != nil {
		t.Fatal(err)
	}
	return sb.bytes()
}

// waitResize waits for a resize in progress to end.
func waitResize(t *testing.T, s *Stateful) {
	t.Helper()
	s.mu.Lock()
	done := s.resize.done
	s.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("resize did not end in 60s")
	}
}

// TestStartFormatsABlankDisk: a blank disk gets an ext4 filesystem and is
// mounted; a second Start finds it mounted and formats nothing.
func TestStartFormatsABlankDisk(t *testing.T) {
	storagetest.NeedDisks(t)
	dev, _ := storagetest.LoopDisk(t, 64*mib, nil)
	s := newTest(t, Config{})
	ctx := context.Background()

	got, err := s.Start(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Formatted || got.Repaired || got.Device != dev {
		t.Errorf("Start = %+v, want formatted %s", got, dev)
	}
	m := mountAt(t, s.MountPoint())
	if m == nil || m.FSType != "ext4" || m.Source != dev || !strings.Contains(m.VFSOptions, "discard") {
		t.Fatalf("mount point holds %+v, want %s as ext4 with discard", m, dev)
	}
	st := statfs(t, s.MountPoint())
	if want := st.Bavail * uint64(st.Bsize); got.FreeBytes != want || want == 0 {
		t.Errorf("free bytes %d, statfs says %d", got.FreeBytes, want)
	}
	// No blocks kept for root.
	if out := storagetest.Run(t, "dumpe2fs", "-h", dev); !regexp.MustCompile(`(?m)^Reserved block count:\s+0$`).MatchString(out) {
		t.Errorf("blocks reserved for root:\n%s", out)
	}
	if st.Bsize != 4096 {
		t.Errorf("block size %d on a 64 MiB disk, want 4096", st.Bsize)
	}
	if err := os.WriteFile(filepath.Join(s.MountPoint(), "kept"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := s.Start(ctx, dev)
	if err != nil || again.Formatted || again.Device != dev {
		t.Fatalf("second Start = %+v, %v", again, err)
	}
	if b, err := os.ReadFile(filepath.Join(s.MountPoint(), "kept")); err != nil || string(b) != "data" {
		t.Fatalf("data after a second Start: %q, %v", b, err)
	}
	free, err := s.AvailableSpace()
	if want := statfs(t, s.MountPoint()); err != nil || free != want.Bavail*uint64(want.Bsize) {
		t.Errorf("AvailableSpace = %d, %v; statfs says %d", free, err, want.Bavail*uint64(want.Bsize))
	}
}

// TestStartKeepsAFilesystem: a disk with an ext4 filesystem is mounted as
// it is, and grown to its disk.
func TestStartKeepsAFilesystem(t *testing.T) {
	storagetest.NeedDisks(t)
	dev, file := storagetest.LoopDisk(t, 64*mib, nil)
	storagetest.Run(t, "mkfs.ext4", "-q", "-T", "default", dev)
	dir := t.TempDir()
	storagetest.Run(t, "mount", dev, dir)
	os.WriteFile(filepath.Join(dir, "old"), []byte("old data"), 0o644)
	storagetest.Run(t, "umount", dir)
	storagetest.GrowLoop(t, dev, file, 96*mib)

	s := newTest(t, Config{})
	got, err := s.Start(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if got.Formatted || got.Repaired {
		t.Errorf("Start = %+v: formatted or repaired a sound filesystem", got)
	}
	if b, err := os.ReadFile(filepath.Join(s.MountPoint(), "old")); err != nil || string(b) != "old data" {
		t.Fatalf("the disk's data: %q, %v", b, err)
	}
	// Grown to the disk where the kernel lets the agent (PID 1 in a VM
	// may; a test without CAP_SYS_RESOURCE may not, and the filesystem
	// stays as it was, which Start only logs).
	if size := fsBytes(t, dev); storagetest.HasCap(unix.CAP_SYS_RESOURCE) && size != 96*mib {
		t.Errorf("filesystem is %d bytes on a 96 MiB disk", size)
	}
}

// TestStartRepairs: an ext4 filesystem that does not mount (a group
// descriptor's checksum broken) is repaired and mounted, and says so.
func TestStartRepairs(t *testing.T) {
	storagetest.NeedDisks(t)
	dev, _ := storagetest.LoopDisk(t, 64*mib, nil)
	storagetest.Run(t, "mkfs.ext4", "-q", "-T", "default", "-O", "metadata_csum,64bit", dev)
	// The group descriptors follow the superblock's block (block 1 with
	// 4 KiB blocks); bg_checksum is at 0x1e of the first.
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xde, 0xad}, 4096+0x1e); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := unix.Mount(dev, t.TempDir(), "ext4", 0, ""); err == nil {
		t.Fatal("the broken filesystem mounts: the test breaks nothing")
	}

	s := newTest(t, Config{})
	got, err := s.Start(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if got.Formatted || !got.Repaired {
		t.Errorf("Start = %+v, want repaired, not formatted", got)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Errorf("not mounted after the repair: %+v", m)
	}
}

// TestStartLeavesOtherData: a disk with anything but zeros at either end
// that is not ext4 is never formatted, and its bytes are as they were.
func TestStartLeavesOtherData(t *testing.T) {
	storagetest.NeedDisks(t)
	for _, tc := range []struct {
		name string
		off  int64
	}{
		{"at the start", 0},
		{"in the first MiB", 700 << 10},
		{"at the end", 64*mib - 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := []byte("cabin: not a filesystem")
			dev, file := storagetest.LoopDisk(t, 64*mib, func(f *os.File) { f.WriteAt(mark, tc.off) })
			before := storagetest.Run(t, "sha256sum", file)
			s := newTest(t, Config{})
			_, err := s.Start(context.Background(), dev)
			wantKind(t, err, errdefs.ErrFailedPrecondition, "left as it is")
			if after := storagetest.Run(t, "sha256sum", file); after != before {
				t.Error("the disk was written to")
			}
			if m := mountAt(t, s.MountPoint()); m != nil {
				t.Errorf("mounted: %+v", m)
			}
			if _, err := s.AvailableSpace(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Errorf("AvailableSpace without a stateful disk: %v", err)
			}
		})
	}
}

func TestStartBadDevice(t *testing.T) {
	s := newTest(t, Config{})
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		device  string
		kind    error
		mention string
	}{
		{"dev/vdb", errdefs.ErrInvalidArgument, "stateful_device"},
		{"/dev/../dev/vdb", errdefs.ErrInvalidArgument, "stateful_device"},
		{"/dev/cabin-no-such-disk", errdefs.ErrNotFound, "no such device"},
		{file, errdefs.ErrInvalidArgument, "not a block device"},
		// No virtio disk at all.
		{"", errdefs.ErrFailedPrecondition, "no stateful disk"},
	} {
		_, err := s.Start(ctx, tc.device)
		wantKind(t, err, tc.kind, tc.mention)
	}
}

// TestStartMountPointTaken: another filesystem on the mount point is left
// alone.
func TestStartMountPointTaken(t *testing.T) {
	storagetest.NeedDisks(t)
	dev, _ := storagetest.LoopDisk(t, 64*mib, nil)
	s := newTest(t, Config{})
	os.MkdirAll(s.MountPoint(), 0o755)
	if err := unix.Mount("cabin-test", s.MountPoint(), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Start(context.Background(), dev)
	wantKind(t, err, errdefs.ErrFailedPrecondition, "another filesystem")
	if blank, _ := isBlank(dev); !blank {
		t.Error("the disk was formatted")
	}
}

// TestFindDisk: the first virtio disk by name, skipping those mounted
// elsewhere and what virtio_blk does not name.
func TestFindDisk(t *testing.T) {
	sys, devDir := t.TempDir(), t.TempDir()
	// A device number something is mounted from here: the root's.
	root := mountAt(t, "/")
	if root == nil {
		t.Skip("no mount on / in mountinfo")
	}
	rootDev := fmt.Sprintf("%d:%d", root.Major, root.Minor)
	disk := func(name, dev string, parts ...string) {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "dev"), []byte(dev+"\n"), 0o444)
		for i, p := range parts {
			os.MkdirAll(filepath.Join(sys, name, name+strconv.Itoa(i+1)), 0o755)
			os.WriteFile(filepath.Join(sys, name, name+strconv.Itoa(i+1), "dev"), []byte(p+"\n"), 0o444)
		}
	}
	s := newTest(t, Config{SysBlock: sys, DevDir: devDir})
	disk("sda", "8:0")
	disk("vdaa", "254:999")
	disk("vdc", "254:32")
	got, err := s.findDisk()
	if err != nil || got != filepath.Join(devDir, "vdc") {
		t.Fatalf("findDisk = %q, %v; want vdc", got, err)
	}
	// vdb comes first, unless it (or a partition of it) is mounted.
	disk("vdb", rootDev)
	if got, _ := s.findDisk(); got != filepath.Join(devDir, "vdc") {
		t.Errorf("findDisk = %q with vdb mounted on /; want vdc", got)
	}
	os.RemoveAll(filepath.Join(sys, "vdb"))
	disk("vdb", "254:16", rootDev)
	if got, _ := s.findDisk(); got != filepath.Join(devDir, "vdc") {
		t.Errorf("findDisk = %q with vdb1 mounted on /; want vdc", got)
	}
	os.RemoveAll(filepath.Join(sys, "vdb"))
	disk("vdb", "254:16")
	if got, _ := s.findDisk(); got != filepath.Join(devDir, "vdb") {
		t.Errorf("findDisk = %q, want vdb", got)
	}
}

func startedDisk(t *testing.T, size int64, cfg Config) (*Stateful, string, string) {
	t.Helper()
	storagetest.NeedDisks(t)
	dev, file := storagetest.LoopDisk(t, size, nil)
	s := newTest(t, cfg)
	if _, err := s.Start(context.Background(), dev); err != nil {
		t.Fatal(err)
	}
	return s, dev, file
}

// TestResizeGrowOnline grows the mounted filesystem once the disk grew,
// while a file stays open on it.
func TestResizeGrowOnline(t *testing.T) {
	if !storagetest.HasCap(unix.CAP_SYS_RESOURCE) {
		t.Skip("online resize needs CAP_SYS_RESOURCE, which this test process lacks (the agent, PID 1 in a VM, has it: integration/maitred2_test.go grows a mounted filesystem there)")
	}
	s, dev, file := startedDisk(t, 64*mib, Config{})
	open, err := os.Create(filepath.Join(s.MountPoint(), "open"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	storagetest.GrowLoop(t, dev, file, 160*mib)
	if err := s.Resize(context.Background(), 160*mib); err != nil {
		t.Fatal(err)
	}
	waitResize(t, s)
	st, err := s.ResizeStatus()
	if err != nil || st.Running || st.Err != nil || st.Current != 160*mib || st.Target != 160*mib {
		t.Fatalf("status after the resize: %+v, %v", st, err)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Error("unmounted by an online resize")
	}
	if fs := statfs(t, s.MountPoint()); fs.Blocks*uint64(fs.Bsize) < 150*mib {
		t.Errorf("statfs sees %d bytes after growing to 160 MiB", fs.Blocks*uint64(fs.Bsize))
	}
}

// TestResizeShrink shrinks the filesystem, unmounted, and mounts it again
// with its data.
func TestResizeShrink(t *testing.T) {
	s, dev, _ := startedDisk(t, 64*mib, Config{})
	os.WriteFile(filepath.Join(s.MountPoint(), "kept"), []byte("data"), 0o644)
	if err := s.Resize(context.Background(), 40*mib); err != nil {
		t.Fatal(err)
	}
	waitResize(t, s)
	st, err := s.ResizeStatus()
	if err != nil || st.Running || st.Err != nil || st.Current != 40*mib || st.Target != 40*mib {
		t.Fatalf("status after the resize: %+v, %v", st, err)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Fatal("not mounted again after shrinking")
	}
	if b, err := os.ReadFile(filepath.Join(s.MountPoint(), "kept")); err != nil || string(b) != "data" {
		t.Fatalf("data after shrinking: %q, %v", b, err)
	}
}

// TestResizeWhileRunning: while a resize runs its status says so, with
// the size before it; a second resize and the bounds are refused. The
// test's resize2fs waits for the test before doing its work.
func TestResizeWhileRunning(t *testing.T) {
	real, err := exec.LookPath("resize2fs")
	if err != nil {
		t.Skip("no resize2fs")
	}
	bin := t.TempDir()
	release := filepath.Join(t.TempDir(), "release")
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" != -P ]; then while [ ! -e %s ]; do sleep 0.02; done; fi\nexec %s \"$@\"\n", release, real)
	os.WriteFile(filepath.Join(bin, "resize2fs"), []byte(script), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	s, _, _ := startedDisk(t, 64*mib, Config{})
	t.Cleanup(func() { os.WriteFile(release, nil, 0o644) })

	if err := s.Resize(context.Background(), 48*mib); err != nil {
		t.Fatal(err)
	}
	st, err := s.ResizeStatus()
	if err != nil || !st.Running || st.Current != 64*mib || st.Target != 48*mib {
		t.Fatalf("status while resizing: %+v, %v", st, err)
	}
	err = s.Resize(context.Background(), 56*mib)
	if !errors.Is(err, ErrResizeRunning) {
		t.Fatalf("a second resize: %v, want ErrResizeRunning", err)
	}
	if _, err := s.MinimumSize(context.Background()); !errors.Is(err, ErrResizeRunning) {
		t.Errorf("bounds while resizing: %v", err)
	}
	// Shrinking: unmounted meanwhile.
	if _, err := s.AvailableSpace(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("AvailableSpace while shrinking: %v", err)
	}
	os.WriteFile(release, nil, 0o644)
	waitResize(t, s)
	if st, err := s.ResizeStatus(); err != nil || st.Running || st.Err != nil || st.Current != 48*mib {
		t.Fatalf("status after the resize: %+v, %v", st, err)
	}
}

// TestResizeRefused: sizes below the minimum or beyond the disk, 0, and a
// resize before Start.
func TestResizeRefused(t *testing.T) {
	none := newTest(t, Config{})
	if err := none.Resize(context.Background(), 64*mib); !errors.Is(err, ErrNoStateful) {
		t.Errorf("resize before Start: %v", err)
	}
	if _, err := none.ResizeStatus(); !errors.Is(err, ErrNoStateful) {
		t.Errorf("status before Start: %v", err)
	}
	if _, err := none.MinimumSize(context.Background()); !errors.Is(err, ErrNoStateful) {
		t.Errorf("bounds before Start: %v", err)
	}

	s, dev, _ := startedDisk(t, 64*mib, Config{DiskWait: 300 * time.Millisecond})
	ctx := context.Background()
	minimum, err := s.MinimumSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if minimum == 0 || minimum >= 64*mib || minimum%4096 != 0 {
		t.Fatalf("minimum %d bytes for a 64 MiB filesystem", minimum)
	}
	t.Logf("minimum size of an empty 64 MiB filesystem: %d bytes", minimum)
	wantKind(t, s.Resize(ctx, 0), errdefs.ErrInvalidArgument, "size")
	err = s.Resize(ctx, minimum-4096)
	if err == nil || errors.Is(err, ErrResizeRunning) || !strings.Contains(err.Error(), "below") {
		t.Errorf("below the minimum: %v", err)
	}
	start := time.Now()
	err = s.Resize(ctx, 128*mib)
	if err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Errorf("beyond the disk: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("gave up after %v without waiting for the disk to grow", d)
	}
	// Nothing changed, nothing runs.
	if st, err := s.ResizeStatus(); err != nil || st.Running || st.Current != 64*mib {
		t.Errorf("status after refusals: %+v, %v", st, err)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Error("unmounted by a refused resize")
	}
	// The same size: nothing to do, and done at once.
	if err := s.Resize(ctx, 64*mib); err != nil {
		t.Errorf("resize to its own size: %v", err)
	}
}

// TestResizeShrinkBusy: a shrink is refused while something holds the
// filesystem, which stays mounted.
func TestResizeShrinkBusy(t *testing.T) {
	s, dev, _ := startedDisk(t, 64*mib, Config{})
	f, err := os.Create(filepath.Join(s.MountPoint(), "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = s.Resize(context.Background(), 48*mib)
	if err == nil || !strings.Contains(err.Error(), "unmount") {
		t.Fatalf("shrink of a busy filesystem: %v", err)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Error("unmounted")
	}
	if st, _ := s.ResizeStatus(); st.Running {
		t.Error("a refused resize runs")
	}
}

// TestBalloon: the guest's free space follows the host's, less 1 GiB.
func TestBalloon(t *testing.T) {
	s, _, _ := startedDisk(t, 256*mib, Config{})
	free := func() int64 {
		st := statfs(t, s.MountPoint())
		return int64(st.Bavail) * st.Bsize
	}
	start := free()
	near := func(what string, got, want int64) {
		t.Helper()
		// The balloon's extent blocks, a few at most.
		if got > want || got < want-64<<10 {
			t.Errorf("%s: guest free %d bytes, want about %d", what, got, want)
		}
	}
	// The host has half what the guest has, beyond the headroom.
	if err := s.AdjustBalloon(BalloonHeadroom + start/2); err != nil {
		t.Fatal(err)
	}
	near("inflated", free(), start/2)
	if n, _ := s.BalloonBytes(); n < start/2-64<<10 || n > start/2+64<<10 {
		t.Errorf("balloon holds %d bytes, want about %d", n, start/2)
	}
	// The host has more: the balloon deflates, here to nothing.
	if err := s.AdjustBalloon(BalloonHeadroom + 10*start); err != nil {
		t.Fatal(err)
	}
	if got := free(); got != start {
		t.Errorf("deflated: guest free %d, want %d", got, start)
	}
	if n, _ := s.BalloonBytes(); n != 0 {
		t.Errorf("deflated balloon holds %d bytes", n)
	}
	// The host has less than the headroom: the balloon would be larger
	// than the guest's free space, and takes all of it.
	if err := s.AdjustBalloon(BalloonHeadroom / 2); err != nil {
		t.Fatalf("balloon for all the free space: %v", err)
	}
	if got := free(); got != 0 {
		t.Errorf("the host has no room and the guest still has %d bytes free", got)
	}
	if err := os.WriteFile(filepath.Join(s.MountPoint(), "x"), make([]byte, mib), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing a MiB on a disk the balloon fills: %v, want ENOSPC", err)
	}
	os.Remove(filepath.Join(s.MountPoint(), "x"))
	wantKind(t, s.AdjustBalloon(-1), errdefs.ErrInvalidArgument, "free_space_bytes")
	// Let go, it gives the space back.
	s.Close()
	if got := free(); got < start-64<<10 {
		t.Errorf("after Close: guest free %d, want about %d", got, start)
	}

	none := newTest(t, Config{})
	if err := none.AdjustBalloon(BalloonHeadroom); !errors.Is(err, ErrNoStateful) {
		t.Errorf("balloon before Start: %v", err)
	}
}

func TestParseSuperblock(t *testing.T) {
	b := make([]byte, superblockLength)
	le := func(off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	b[sbMagic], b[sbMagic+1] = 0x53, 0xef
	le(sbLogBlockSize, 2)
	le(sbBlocksLo, 1000)
	le(sbBlocksHi, 1)
	sb, err := parseSuperblock(bytes.NewReader(b))
	if err != nil || sb.blockSize != 4096 || sb.blocks != 1000 {
		t.Errorf("32-bit: %+v, %v", sb, err)
	}
	le(sbIncompat, incompat64Bit)
	sb, err = parseSuperblock(bytes.NewReader(b))
	if err != nil || sb.blocks != 1<<32+1000 || sb.bytes() != (1<<32+1000)*4096 {
		t.Errorf("64-bit: %+v, %v", sb, err)
	}
	le(sbLogBlockSize, 7)
	if _, err := parseSuperblock(bytes.NewReader(b)); !errors.Is(err, errNotExt4) {
		t.Errorf("2^7 KiB blocks: %v", err)
	}
	b[sbMagic] = 0
	if _, err := parseSuperblock(bytes.NewReader(b)); !errors.Is(err, errNotExt4) {
		t.Errorf("no magic: %v", err)
	}
	if _, err := parseSuperblock(bytes.NewReader(b[:100])); !errors.Is(err, errNotExt4) {
		t.Errorf("short: %v", err)
	}
}

func TestParseMinimum(t *testing.T) {
	n, err := parseMinimum("resize2fs 1.47.0 (5-Feb-2023)\nEstimated minimum size of the filesystem: 13694\n")
	if err != nil || n != 13694 {
		t.Errorf("= %d, %v", n, err)
	}
	if _, err := parseMinimum("resize2fs: Bad magic number in super-block\n"); err == nil {
		t.Error("no estimate parsed as one")
	}
}

// TestResizeFailsLater: a resize whose resize2fs fails ends with the
// failure in its status, the filesystem as it was and mounted again.
func TestResizeFailsLater(t *testing.T) {
	bin := t.TempDir()
	real, err := exec.LookPath("resize2fs")
	if err != nil {
		t.Skip("no resize2fs")
	}
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = -P ]; then exec %s \"$@\"; fi\necho 'resize2fs: cabin test: no' >&2\nexit 1\n", real)
	os.WriteFile(filepath.Join(bin, "resize2fs"), []byte(script), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	s, dev, _ := startedDisk(t, 64*mib, Config{})
	if err := s.Resize(context.Background(), 48*mib); err != nil {
		t.Fatal(err)
	}
	waitResize(t, s)
	st, err := s.ResizeStatus()
	if err != nil || st.Running || st.Current != 64*mib || st.Target != 48*mib || st.Err == nil || !strings.Contains(st.Err.Error(), "cabin test: no") {
		t.Fatalf("status after a failed resize: %+v, %v", st, err)
	}
	if m := mountAt(t, s.MountPoint()); m == nil || m.Source != dev {
		t.Fatal("not mounted again after a failed shrink")
	}
}
