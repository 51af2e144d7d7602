package kata

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestStorageSpec(t *testing.T) {
	for _, c := range []struct {
		name string
		s    Storage
		want mountSpec
	}{
		{"9p implies virtio", Storage{Driver: "9p", Source: "cabinRootfs", Options: []string{"ro", "version=9p2000.L", "msize=262144"}},
			mountSpec{source: "cabinRootfs", fstype: "9p", flags: unix.MS_RDONLY, data: "trans=virtio,version=9p2000.L,msize=262144"}},
		{"9p explicit virtio", Storage{Driver: "9p", Source: "t", FSType: "9p", Options: []string{"trans=virtio", "nodev", "cache=mmap"}},
			mountSpec{source: "t", fstype: "9p", flags: unix.MS_NODEV, data: "trans=virtio,cache=mmap"}},
		{"9p rw after ro", Storage{Driver: "9p", Source: "t", Options: []string{"ro", "rw", "nosuid"}},
			mountSpec{source: "t", fstype: "9p", flags: unix.MS_NOSUID, data: "trans=virtio"}},
		{"ephemeral", Storage{Driver: "ephemeral", Source: "anything", Options: []string{"size=64m", "mode=1777", "nosuid", "nodev"}},
			mountSpec{source: "tmpfs", fstype: "tmpfs", flags: unix.MS_NOSUID | unix.MS_NODEV, data: "size=64m,mode=1777"}},
		{"ephemeral bare", Storage{Driver: "ephemeral", FSType: "tmpfs"},
			mountSpec{source: "tmpfs", fstype: "tmpfs"}},
		{"local", Storage{Driver: "local", Options: []string{"mode=0777"}}, mountSpec{mode: 0o777}},
		{"local bare", Storage{Driver: "local"}, mountSpec{}},
	} {
		got, err := c.s.spec("storages[0]")
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestStorageSpecInvalid(t *testing.T) {
	for _, c := range []struct {
		field string
		s     Storage
	}{
		{"driver", Storage{}},
		{"driver", Storage{Driver: "scsi", Source: "/dev/sda"}},
		{"fstype", Storage{Driver: "blk", Source: "/dev/vdb"}},
		{"fstype", Storage{Driver: "blk", Source: "/dev/vdb", FSType: "tmpfs"}},
		{"source", Storage{Driver: "blk", Source: "vdb", FSType: "ext4"}},
		{"source", Storage{Driver: "blk", Source: "/dev/../etc/x", FSType: "ext4"}},
		{"source", Storage{Driver: "mmioblk", Source: "02", FSType: "ext4"}},
		{"options", Storage{Driver: "virtio-blk", Source: "02/03", FSType: "ext4", Options: []string{"size=1m"}}},
		{"options", Storage{Driver: "virtio-blk", Source: "02/03", FSType: "ext4", Options: []string{"discard,dax"}}},
		{"driver", Storage{Driver: "virtio-fs"}},
		{"driver_options", Storage{Driver: "9p", Source: "t", DriverOptions: []string{"x"}}},
		{"fs_group", Storage{Driver: "local", FSGroup: true}},
		{"fstype", Storage{Driver: "9p", Source: "t", FSType: "ext4"}},
		{"fstype", Storage{Driver: "ephemeral", FSType: "9p"}},
		{"fstype", Storage{Driver: "local", FSType: "tmpfs"}},
		{"source", Storage{Driver: "9p"}},
		{"source", Storage{Driver: "9p", Source: "a,b"}},
		{"source", Storage{Driver: "9p", Source: strings.Repeat("t", maxTag+1)}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{"trans=tcp"}}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{"trans=fd"}}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{"cache=loose,trans=tcp"}}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{"port=564"}}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{""}}},
		{"options", Storage{Driver: "9p", Source: "t", Options: []string{"size=1m"}}},
		{"options", Storage{Driver: "ephemeral", Options: []string{"trans=virtio"}}},
		{"options", Storage{Driver: "ephemeral", Options: []string{"size=1m\x00"}}},
		{"options", Storage{Driver: "local", Options: []string{"mode=999"}}},
		{"options", Storage{Driver: "local", Options: []string{"mode=17777"}}},
		{"options", Storage{Driver: "local", Options: []string{"ro"}}},
	} {
		_, err := c.s.spec("storages[2]")
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "storages[2]."+c.field+": ") {
			t.Errorf("%+v: %v, want an invalid storages[2].%s", c.s, err, c.field)
		}
	}
}

func TestCheckMountPoint(t *testing.T) {
	reserved := []string{"/run/cabin/runtime", "/run/cabin/bundles"}
	for _, p := range []string{"/run/x", "/run/kata-containers/shared/containers/c1/rootfs", "/run/cabin/rootfs", "/run/cabin/bundles2"} {
		if err := checkMountPoint("mount_point", p, reserved); err != nil {
			t.Errorf("%q refused: %v", p, err)
		}
	}
	for _, p := range []string{
		"", "../x", "x", "run/x", "/etc", "/", "/run", "/run/", "/run/../etc", "/run/x/../../etc",
		"/run//x", "/run/x/", "/run/./x", "/runx", "/run/x\x00", "/tmp/run/x",
		"/run/cabin", "/run/cabin/bundles", "/run/cabin/bundles/c1", "/run/cabin/runtime/x",
	} {
		err := checkMountPoint("storages[0].mount_point", p, reserved)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "storages[0].mount_point: ") {
			t.Errorf("%q: %v, want an invalid storages[0].mount_point", p, err)
		}
	}
}

// TestOpenDir checks the walk that makes mount points, on a temporary
// tree: it follows no symlink, and makes what is missing.
func TestOpenDir(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"link", "link/sub", "file", "file/sub"} {
		_, _, err := openDir("mp", filepath.Join(root, p), true)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "mp: ") {
			t.Errorf("%s: %v, want an invalid mp", p, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("walk made %v through the symlink", entries)
	}
	if _, _, err := openDir("mp", filepath.Join(root, "new/sub"), false); !errors.Is(err, errMissing) {
		t.Errorf("missing without create: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("walk without create made something: %v", err)
	}
	fd, created, err := openDir("mp", filepath.Join(root, "new/sub"), true)
	if err != nil || !created {
		t.Fatalf("create: created %v, %v", created, err)
	}
	unix.Close(fd)
	if fi, err := os.Lstat(filepath.Join(root, "new/sub")); err != nil || !fi.IsDir() {
		t.Errorf("made %v, %v", fi, err)
	}
	fd, created, err = openDir("mp", filepath.Join(root, "dir"), true)
	if err != nil || created {
		t.Fatalf("existing: created %v, %v", created, err)
	}
	unix.Close(fd)
}

// TestMountsCheckChangesNothing: a list with a bad storage anywhere is
// refused whole, before anything is mounted or made.
func TestMountsCheckChangesNothing(t *testing.T) {
	m := newMounts(testLog(), nil, nil)
	for _, list := range [][]Storage{
		{{Driver: "ephemeral", MountPoint: "/run/cabin-test-x"}, {Driver: "nope", MountPoint: "/run/cabin-test-y"}},
		{{Driver: "ephemeral", MountPoint: "/run/cabin-test-x"}, {Driver: "ephemeral", MountPoint: "/run/cabin-test-x"}},
		{{Driver: "local", MountPoint: "/run/cabin-test-x"}, {Driver: "local", MountPoint: "/etc/x"}},
	} {
		if _, err := m.acquire(t.Context(), "storages", list); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want InvalidArgument", list, err)
		}
	}
	if got := m.points(); len(got) != 0 {
		t.Errorf("mounted %v", got)
	}
	if _, err := os.Lstat("/run/cabin-test-x"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/cabin-test-x: %v, want it never made", err)
	}
}

// points lists the mount points in use and their users.
func (m *mounts) points() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for p, mt := range m.byPoint {
		out[p] = mt.users
	}
	return out
}
