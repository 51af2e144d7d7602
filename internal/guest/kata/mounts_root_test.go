package kata

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// TestRootStorage mounts real storages, as root, in a child of its own
// (see runChild).
func TestRootStorage(t *testing.T) {
	subtests := []string{"sandbox", "counted", "conflict", "symlink", "rollback", "bind"}
	if inChild("TestRootStorage") {
		childSetup(t)
		t.Run("sandbox", testSandboxStorages)
		t.Run("counted", testStorageCounted)
		t.Run("conflict", testStorageConflict)
		t.Run("symlink", testStorageSymlink)
		t.Run("rollback", testStorageRollback)
		t.Run("bind", testBindMount)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts tmpfs and sets the hostname, in namespaces of its own")
	}
	runChild(t, "TestRootStorage", subtests)
}

// testSandboxStorages: CreateSandbox mounts its storages and sets the
// hostname; DestroySandbox undoes the storages.
func testSandboxStorages(t *testing.T) {
	dir := testDir(t)
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(), RuntimeRoot: t.TempDir()})
	eph, local := filepath.Join(dir, "a/eph"), filepath.Join(dir, "local")
	_, err := c.CreateSandbox(t.Context(), &pb.CreateSandboxRequest{
		Hostname: "kata-test-box",
		Storages: []*pb.Storage{
			{Driver: "ephemeral", Source: "tmpfs", MountPoint: eph, Options: []string{"size=1m", "mode=0750", "nodev"}},
			{Driver: "local", MountPoint: local, Options: []string{"mode=0700"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if fstype, opts := mountedAt(t, eph); fstype != "tmpfs" || !strings.Contains(opts, "nodev") ||
		!strings.Contains(opts, "size=1024k") || !strings.Contains(opts, "mode=750") {
		t.Errorf("%s: %q %q", eph, fstype, opts)
	}
	if fi, err := os.Stat(local); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v", local, fi, err)
	}
	if name, _ := os.Hostname(); name != "kata-test-box" {
		t.Errorf("hostname %q", name)
	}
	if _, err := c.DestroySandbox(t.Context(), &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	if fstype, _ := mountedAt(t, eph); fstype != "" {
		t.Errorf("%s still mounted (%s)", eph, fstype)
	}
	for _, p := range []string{eph, local} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	// "a" was made on the way to eph; only mount points go.
	os.Remove(filepath.Join(dir, "a"))
}

// testStorageCounted: a storage used twice is unmounted with its last
// user.
func testStorageCounted(t *testing.T) {
	dir := testDir(t)
	m := newMounts(testLog(), nil, func(context.Context) error { return nil })
	s := []Storage{{Driver: "ephemeral", MountPoint: filepath.Join(dir, "shared")}}
	a, err := m.acquire(t.Context(), "storages", s)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.acquire(t.Context(), "storages", s)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.points(); got[s[0].MountPoint] != 2 {
		t.Errorf("users %v", got)
	}
	if _, err := m.release(a); err != nil {
		t.Fatal(err)
	}
	if fstype, _ := mountedAt(t, s[0].MountPoint); fstype != "tmpfs" {
		t.Errorf("unmounted while a user is left (%q)", fstype)
	}
	if _, err := m.release(b); err != nil {
		t.Fatal(err)
	}
	if fstype, _ := mountedAt(t, s[0].MountPoint); fstype != "" {
		t.Errorf("still mounted after the last user (%q)", fstype)
	}
	if len(m.points()) != 0 {
		t.Errorf("table %v", m.points())
	}
}

// testStorageConflict: another storage on a mount point in use is refused,
// and nothing of its request is mounted.
func testStorageConflict(t *testing.T) {
	dir := testDir(t)
	m := newMounts(testLog(), nil, func(context.Context) error { return nil })
	first := Storage{Driver: "ephemeral", MountPoint: filepath.Join(dir, "x")}
	held, err := m.acquire(t.Context(), "storages", []Storage{first})
	if err != nil {
		t.Fatal(err)
	}
	defer m.release(held)
	other := Storage{Driver: "ephemeral", MountPoint: filepath.Join(dir, "y")}
	clash := Storage{Driver: "local", MountPoint: first.MountPoint}
	_, err = m.acquire(t.Context(), "storages", []Storage{other, clash})
	if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.HasPrefix(err.Error(), "storages[1].mount_point: ") {
		t.Errorf("clash: %v", err)
	}
	if _, err := os.Lstat(other.MountPoint); !os.IsNotExist(err) {
		t.Errorf("%s made by a refused request: %v", other.MountPoint, err)
	}
	if got := m.points(); len(got) != 1 || got[first.MountPoint] != 1 {
		t.Errorf("table %v", got)
	}
}

// testStorageSymlink: a mount point reached through a symlink is refused,
// whatever the link points to.
func testStorageSymlink(t *testing.T) {
	dir := testDir(t)
	outside := t.TempDir()
	link := filepath.Join(dir, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(), RuntimeRoot: t.TempDir()})
	for _, mp := range []string{link, filepath.Join(link, "sub")} {
		_, err := c.CreateSandbox(t.Context(), &pb.CreateSandboxRequest{
			Storages: []*pb.Storage{{Driver: "ephemeral", MountPoint: mp}},
		})
		wantCode(t, mp, err, codes.InvalidArgument, "storages[0].mount_point: ")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("made %v through the symlink", entries)
	}
	if fstype, _ := mountedAt(t, outside); fstype != "" {
		t.Errorf("mounted %s on the link's target", fstype)
	}
}

// testStorageRollback: a storage that fails to mount undoes those of the
// same request mounted before it.
func testStorageRollback(t *testing.T) {
	dir := testDir(t)
	m := newMounts(testLog(), nil, func(context.Context) error { return nil })
	ok := Storage{Driver: "ephemeral", MountPoint: filepath.Join(dir, "ok")}
	// No virtio-9p device here has this tag (nor is there likely one at
	// all): the mount fails.
	bad := Storage{Driver: "9p", Source: "no-such-tag", MountPoint: filepath.Join(dir, "bad")}
	if _, err := m.acquire(t.Context(), "storages", []Storage{ok, bad}); err == nil {
		t.Fatal("9p mount of a tag nobody has succeeded")
	} else if !strings.HasPrefix(err.Error(), "storages[1]: mount 9p") {
		t.Errorf("error %v does not name the storage", err)
	}
	for _, p := range []string{ok.MountPoint, bad.MountPoint} {
		if fstype, _ := mountedAt(t, p); fstype != "" {
			t.Errorf("%s left mounted (%s)", p, fstype)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	if len(m.points()) != 0 {
		t.Errorf("table %v", m.points())
	}
}

// testBindMount: a second mount point of one 9p share is a bind of the
// first (bindMount), with its own flags, and outlives the first. A tmpfs
// stands in for the share, which this host has not.
func testBindMount(t *testing.T) {
	dir := testDir(t)
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	for _, d := range []string{first, second} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(d) })
	}
	if err := unix.Mount("tmpfs", first, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(first, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(first, "f"), []byte("shared"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(second, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := bindMount(first, fd, unix.MS_RDONLY|unix.MS_NODEV); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(second, unix.MNT_DETACH) })
	if _, opts := mountedAt(t, second); !strings.HasPrefix(opts, "ro,") || !strings.Contains(opts, "nodev") {
		t.Errorf("%s: options %q, want ro and nodev", second, opts)
	}
	if err := os.WriteFile(filepath.Join(second, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write through the read-only bind: %v, want EROFS", err)
	}
	if err := unix.Unmount(first, 0); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(second, "f")); err != nil || string(b) != "shared" {
		t.Errorf("after the first mount went: %q, %v", b, err)
	}

	m := newMounts(slog.New(slog.DiscardHandler), nil, nil)
	m.byPoint["/run/a"] = &mounted{spec: mountSpec{source: "cabinRootfs", fstype: fstype9P}}
	m.byPoint["/run/b"] = &mounted{spec: mountSpec{source: "tmpfs", fstype: "tmpfs"}}
	if got := m.mountedTag(mountSpec{source: "cabinRootfs", fstype: fstype9P}); got != "/run/a" {
		t.Errorf("mountedTag(cabinRootfs) = %q, want /run/a", got)
	}
	for _, spec := range []mountSpec{{source: "other", fstype: fstype9P}, {source: "tmpfs", fstype: "tmpfs"}} {
		if got := m.mountedTag(spec); got != "" {
			t.Errorf("mountedTag(%v) = %q, want none: only a 9p tag mounts once", spec, got)
		}
	}
}
