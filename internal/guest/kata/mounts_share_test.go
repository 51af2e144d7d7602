package kata

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// noShare is the agent's share as a guest whose share cannot be mounted
// has it.
func noShare(context.Context) error {
	return errdefs.Errorf(errdefs.ErrFailedPrecondition, "the guest image's share is missing: the VM has no 9p device tagged %s", bootcfg.RootfsTag)
}

// Without the share, cabin-runtime is not started and the caller learns
// why, with the share's category.
func TestRuntimeWithoutTheShare(t *testing.T) {
	rt := &runtime{path: bootcfg.RuntimeBinary, root: t.TempDir(), log: testLog(), wait: noShare}
	_, err := rt.run([]string{"create", "c1"}, nil)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "guest image's share") ||
		!strings.Contains(err.Error(), bootcfg.RuntimeBinary) || !strings.Contains(err.Error(), bootcfg.RootfsTag) {
		t.Fatalf("run without the share: %v", err)
	}
}

// A storage of the share's tag waits for the agent's mount of it, fails
// with its reason when there is none, and mounts nothing; other storages
// do not wait for it. No storage may sit on the agent's mount.
func TestStoragesOfTheShare(t *testing.T) {
	m := newMounts(testLog(), nil, func(context.Context) error { return nil }).withShare(noShare)
	ctx := context.Background()
	rootfs := Storage{Driver: Driver9P, Source: bootcfg.RootfsTag, FSType: "9p", MountPoint: "/run/cabin/rootfs"}
	_, err := m.acquire(ctx, "storages", []Storage{rootfs})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "storages[0]") || !strings.Contains(err.Error(), bootcfg.RootfsTag) {
		t.Fatalf("acquire of the share without it: %v", err)
	}
	if len(m.byPoint) != 0 {
		t.Errorf("mounted %v", m.byPoint)
	}
	if got := m.agentShare(mustSpec(t, rootfs)); got != bootcfg.RootfsMount {
		t.Errorf("the share's storage binds %q, want the agent's %s", got, bootcfg.RootfsMount)
	}
	other := Storage{Driver: Driver9P, Source: bootcfg.ImagesTag, FSType: "9p", MountPoint: "/run/cabin/images"}
	if got := m.agentShare(mustSpec(t, other)); got != "" {
		t.Errorf("another share binds %q", got)
	}
	if err := m.waitShareFor(ctx, "storages", []Storage{other}); err != nil {
		t.Errorf("another share waited for the image share: %v", err)
	}
	for _, p := range []string{bootcfg.RootfsMount, bootcfg.RootfsMount + "/system", "/run/cabin"} {
		s := Storage{Driver: DriverEphemeral, MountPoint: p}
		if err := m.check("storages", []Storage{s}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("a storage at %s: %v, want InvalidArgument", p, err)
		}
	}
	// An agent without the share (a development agent) mounts the tag
	// as asked.
	plain := newMounts(testLog(), nil, func(context.Context) error { return nil }).withShare(nil)
	if got := plain.agentShare(mustSpec(t, rootfs)); got != "" {
		t.Errorf("without the agent's share, the storage binds %q", got)
	}
}

func mustSpec(t *testing.T, s Storage) mountSpec {
	t.Helper()
	spec, err := s.spec("storage")
	if err != nil {
		t.Fatal(err)
	}
	return spec
}
