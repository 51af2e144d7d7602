package kata

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestKeepsMounted(t *testing.T) {
	for _, tc := range []struct {
		s    Storage
		want bool
	}{
		{Storage{Driver: Driver9P, Source: bootcfg.ImagesTag, MountPoint: "/run/cabin/images"}, true},
		{Storage{Driver: Driver9P, Source: bootcfg.RootfsTag, MountPoint: "/run/cabin/rootfs"}, true},
		{Storage{Driver: Driver9P, Source: "cabinShare3", MountPoint: "/run/x"}, false},
		{Storage{Driver: "ephemeral", Source: bootcfg.ImagesTag, MountPoint: "/run/x"}, false},
	} {
		if got := keepsMounted(tc.s); got != tc.want {
			t.Errorf("%+v: %v", tc.s, got)
		}
	}
}

// TestRootKeptStorage: a storage kept mounted stays mounted (with what was
// written there) once its last container goes, is used again without a
// new mount, and gives way to another storage only while no container
// uses it. As root, in a child of its own (see runChild).
func TestRootKeptStorage(t *testing.T) {
	if inChild("TestRootKeptStorage") {
		childSetup(t)
		t.Run("kept", testKeptStorage)
		t.Run("one per share", testKeptOnePerShare)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts tmpfs in a mount namespace of its own")
	}
	runChild(t, "TestRootKeptStorage", []string{"kept", "one_per_share"})
}

func testKeptStorage(t *testing.T) {
	dir := testDir(t)
	m := newMounts(testLog(), nil, func(context.Context) error { return nil })
	point := filepath.Join(dir, "images")
	m.keep = func(s Storage) bool { return s.MountPoint == point }
	s := []Storage{{Driver: "ephemeral", MountPoint: point}}
	a, err := m.acquire(t.Context(), "storages", s)
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(point, "marker")
	if err := os.WriteFile(marker, []byte("same mount"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := m.release(a); err != nil {
		t.Fatal(err)
	}
	if fstype, _ := mountedAt(t, point); fstype != "tmpfs" {
		t.Fatalf("unmounted with its last container (%q); want it kept", fstype)
	}
	if got := m.points(); got[point] != 1 {
		t.Errorf("users %v; want the VM's alone", got)
	}
	b, err := m.acquire(t.Context(), "storages", s)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(marker); err != nil || string(got) != "same mount" {
		t.Errorf("the next container got another mount: %q, %v", got, err)
	}
	// In use: another storage there is refused.
	clash := []Storage{{Driver: "ephemeral", MountPoint: point, Options: []string{"size=1m"}}}
	if _, err := m.acquire(t.Context(), "storages", clash); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("another storage on a kept one in use: %v", err)
	}
	if _, err := m.release(b); err != nil {
		t.Fatal(err)
	}
	// Idle: it gives way.
	c, err := m.acquire(t.Context(), "storages", clash)
	if err != nil {
		t.Fatalf("another storage on an idle kept one: %v", err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("the kept storage is still there: %v", err)
	}
	if got := m.points(); got[point] != 2 {
		t.Errorf("users %v", got)
	}
	m.keep = nil
	m.release(c)
	m.release(c)
	if fstype, _ := mountedAt(t, point); fstype != "" {
		t.Errorf("still mounted at the end (%q)", fstype)
	}
}

// testKeptOnePerShare: the same share mounted at a second point is not
// kept there: it goes with its last container, so points a client makes
// up do not pile up mounts.
func testKeptOnePerShare(t *testing.T) {
	dir := testDir(t)
	m := newMounts(testLog(), nil, func(context.Context) error { return nil })
	m.keep = func(s Storage) bool { return s.Source == bootcfg.ImagesTag }
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	for _, point := range []string{first, second} {
		a, err := m.acquire(t.Context(), "storages", []Storage{{Driver: "ephemeral", Source: bootcfg.ImagesTag, MountPoint: point}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.release(a); err != nil {
			t.Fatal(err)
		}
	}
	if fstype, _ := mountedAt(t, first); fstype != "tmpfs" {
		t.Errorf("the first mount of the share is not kept (%q)", fstype)
	}
	if fstype, _ := mountedAt(t, second); fstype != "" {
		t.Errorf("a second mount of the same share is kept (%q)", fstype)
	}
	if got := m.points(); len(got) != 1 || got[first] != 1 {
		t.Errorf("users %v; want the VM's alone, at the first point", got)
	}
	m.keep = nil
	m.release([]string{first})
}
