package guestinit

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestMountsTable(t *testing.T) {
	type row struct{ source, target, fstype string }
	var got []row
	for _, m := range Mounts() {
		got = append(got, row{m.Source, m.Target, m.FSType})
	}
	want := []row{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"devpts", "/dev/pts", "devpts"},
		{"shm", "/dev/shm", "tmpfs"},
		{"run", "/run", "tmpfs"},
		{"tmp", "/tmp", "tmpfs"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("mounts = %v\nwant %v", got, want)
	}
	for i, m := range Mounts() {
		// Nothing PID 1 mounts should let a file there become setuid.
		if m.Flags&unix.MS_NOSUID == 0 {
			t.Errorf("%s is mounted without nosuid", m.Target)
		}
		// A mount inside another comes after it, or it would be hidden.
		for _, later := range Mounts()[i+1:] {
			if strings.HasPrefix(m.Target, later.Target+"/") {
				t.Errorf("%s is mounted before %s, which holds it", m.Target, later.Target)
			}
		}
	}
	byTarget := map[string]Mount{}
	for _, m := range Mounts() {
		byTarget[m.Target] = m
	}
	if d := byTarget["/dev/pts"].Data; !strings.Contains(d, "newinstance") || !strings.Contains(d, "ptmxmode=0666") {
		t.Errorf("devpts options %q: want a new instance with a usable ptmx", d)
	}
	for _, dir := range []string{"/tmp", "/dev/shm"} {
		if !strings.Contains(byTarget[dir].Data, "mode=1777") {
			t.Errorf("%s options %q: want mode=1777", dir, byTarget[dir].Data)
		}
	}
}

func TestSymlinksTable(t *testing.T) {
	want := map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
		"/dev/ptmx":   "pts/ptmx",
	}
	got := map[string]string{}
	for _, l := range Symlinks() {
		got[l.Link] = l.Target
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("symlinks = %v, want %v", got, want)
	}
	env := Environment()
	if !slices.Contains(strings.Split(env["PATH"], ":"), "/bin") || env["HOME"] != "/root" || env["TERM"] != "linux" {
		t.Fatalf("environment %v", env)
	}
}

func TestLinkAll(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "dev"), 0o755)
	// devtmpfs's own ptmx node stands where the link goes.
	os.WriteFile(filepath.Join(root, "dev/ptmx"), nil, 0o666)
	for range 2 { // and again over its own links
		if err := linkAll(root, Symlinks()); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range Symlinks() {
		if got, err := os.Readlink(filepath.Join(root, l.Link)); err != nil || got != l.Target {
			t.Errorf("%s -> %q, %v; want %q", l.Link, got, err, l.Target)
		}
	}
}

// TestMountAll applies a table of tmpfs mounts, one inside the other, under
// a temporary root.
func TestMountAll(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	root := t.TempDir()
	table := []Mount{
		{"cabin-outer", "/outer", "tmpfs", unix.MS_NOSUID, "mode=0700"},
		{"cabin-inner", "/outer/inner", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	t.Cleanup(func() {
		unix.Unmount(filepath.Join(root, "outer/inner"), unix.MNT_DETACH)
		unix.Unmount(filepath.Join(root, "outer"), unix.MNT_DETACH)
	})
	if err := mountAll(root, table, testLog()); err != nil {
		t.Fatal(err)
	}
	for _, m := range table {
		target := filepath.Join(root, m.Target)
		found, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
			return i.Mountpoint != target || i.FSType != "tmpfs" || i.Source != m.Source, false
		})
		if err != nil || len(found) == 0 {
			t.Errorf("%s not in mountinfo (%v)", target, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "outer/inner"), &st); err != nil || st.Mode&0o7777 != 0o1777 {
		t.Errorf("inner mode %o, %v: options not applied", st.Mode&0o7777, err)
	}
	// A mount that fails is reported, and the ones after it still made.
	after := filepath.Join(root, "after")
	t.Cleanup(func() { unix.Unmount(after, unix.MNT_DETACH) })
	table = []Mount{{"x", "/bad", "nosuchfs-cabin", 0, ""}, {"cabin-after", "/after", "tmpfs", 0, ""}}
	if err := mountAll(root, table, testLog()); err == nil || !strings.Contains(err.Error(), "/bad") {
		t.Errorf("bad mount: %v", err)
	}
	var root0, after0 unix.Stat_t
	unix.Stat(root, &root0)
	if err := unix.Stat(after, &after0); err != nil || after0.Dev == root0.Dev {
		t.Errorf("mount after a failed one not made")
	}
}

func TestReadModuleList(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "modules.boot")
	os.WriteFile(list, []byte("# boot modules\nkernel/drivers/virtio/virtio_mmio.ko\n\n  kernel/drivers/char/virtio_console.ko  \n"), 0o644)
	got, err := ReadModuleList(list)
	want := []string{"kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/char/virtio_console.ko"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ReadModuleList = %q, %v; want %q", got, err, want)
	}
	if got, err := ReadModuleList(filepath.Join(dir, "missing")); err != nil || got != nil {
		t.Fatalf("missing list = %q, %v; want none", got, err)
	}
	for _, bad := range []string{"../../etc/shadow", "/abs.ko", "a/./b.ko"} {
		os.WriteFile(list, []byte(bad+"\n"), 0o644)
		if _, err := ReadModuleList(list); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestLoadModulesGoesOn: a module that cannot be loaded is reported and
// the ones after it are still tried.
func TestLoadModulesGoesOn(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "list")
	os.WriteFile(list, []byte("first.ko\nsecond.ko\n"), 0o644)
	err := LoadModules(context.Background(), testLog(), dir, list)
	if err == nil || !strings.Contains(err.Error(), "first.ko") || !strings.Contains(err.Error(), "second.ko") {
		t.Fatalf("err = %v; want both modules named", err)
	}
	if err := LoadModules(context.Background(), testLog(), dir, filepath.Join(dir, "none")); err != nil {
		t.Fatalf("missing list: %v", err)
	}
}

func TestWaitPort(t *testing.T) {
	sysfs := t.TempDir()
	port := filepath.Join(sysfs, "vport1p1")
	go func() {
		// The port shows up, and its name a moment later, as when the
		// host's name message follows the device.
		time.Sleep(20 * time.Millisecond)
		os.Mkdir(port, 0o755)
		os.WriteFile(filepath.Join(port, "name"), nil, 0o644)
		time.Sleep(20 * time.Millisecond)
		os.WriteFile(filepath.Join(port, "name"), []byte("cabin.agent\n"), 0o644)
	}()
	dev, err := WaitPort(context.Background(), sysfs, "cabin.agent", 5*time.Second)
	if err != nil || dev != "/dev/vport1p1" {
		t.Fatalf("WaitPort = %q, %v", dev, err)
	}
	start := time.Now()
	_, err = WaitPort(context.Background(), sysfs, "other", 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), `"other" did not appear`) {
		t.Fatalf("missing port: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("timeout not honoured")
	}
}

func TestUserProcesses(t *testing.T) {
	proc := t.TempDir()
	stat := func(pid, content string) {
		os.MkdirAll(filepath.Join(proc, pid), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "stat"), []byte(content), 0o644)
	}
	stat("1", "1 (init) S 0 1 1 0 -1 4194560 0 0")
	stat("2", "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0")   // PF_KTHREAD
	stat("40", "40 (sh) S 1 40 40 0 -1 4194304 0 0")     // user process
	stat("41", "41 (a) b) (c) R 1 41 41 0 -1 4194304 0") // odd name
	stat("42", "42 (dead) Z 1 42 42 0 -1 4194308 0 0")   // zombie
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)      // not a pid
	os.MkdirAll(filepath.Join(proc, "43"), 0o755)        // exited meanwhile
	got, err := userProcesses(proc, 1)
	if err != nil || !reflect.DeepEqual(got, []int{40, 41}) {
		t.Fatalf("userProcesses = %v, %v; want [40 41]", got, err)
	}
	if waitGoneNow(proc, 1) {
		t.Fatal("waitGone: reported none left while 40 and 41 live")
	}
	os.RemoveAll(filepath.Join(proc, "40"))
	os.RemoveAll(filepath.Join(proc, "41"))
	if !waitGoneNow(proc, 1) {
		t.Fatal("waitGone: processes reported left after they went")
	}
}

func waitGoneNow(proc string, self int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	return waitGone(ctx, everyone{procfs: proc, self: self})
}
