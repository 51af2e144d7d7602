package vmm

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// A VM's resources are prepared before its launch, with what they add in
// its hypervisor's configuration and what they keep in its record, and
// released exactly once whichever way the VM ends: a stop, its process
// killed, a launch that failed.
func TestResourcesReleasedOnceWhateverTheEnd(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()

	// Stopped.
	if _, _, err := e.m.Start(context.Background(), spec("stopped")); err != nil {
		t.Fatal(err)
	}
	dir := e.root.VM(statedir.VMID("", "stopped"))
	if args := e.launcher.get(dir).cfg.KernelArgs; !slices.Contains(args, "tracked=stopped") {
		t.Errorf("launched with kernel args %q, want the resource's", args)
	}
	rec, err := readRecord(dir)
	if err != nil || string(rec.Resources["tracker"]) != `"stopped"` {
		t.Errorf("record keeps resources %s (%v), want the tracker's state", rec.Resources, err)
	}
	events.await(t, EventStarted, "stopped")
	if err := e.m.Stop(context.Background(), Key{Name: "stopped"}); err != nil {
		t.Fatal(err)
	}
	e.m.Stop(context.Background(), Key{Name: "stopped"})
	if got := e.tracker.of("stopped"); got != "prepare release" {
		t.Errorf("stopped VM: %q, want prepare and one release", got)
	}

	// Killed: its process ends on its own (QEMU got SIGKILL).
	e.m.Start(context.Background(), spec("killed"))
	events.await(t, EventStarted, "killed")
	e.launcher.get(e.root.VM(statedir.VMID("", "killed"))).Signal(syscall.SIGKILL)
	events.await(t, EventStopped, "killed")
	if got := e.tracker.of("killed"); got != "prepare release" {
		t.Errorf("killed VM: %q, want prepare and one release", got)
	}

	// A launch that failed.
	e.m.opts.Launcher = &failFirstLaunch{fakeLauncher: e.launcher}
	if _, _, err := e.m.Start(context.Background(), spec("failed")); err == nil {
		t.Fatal("start with a failing launch succeeded")
	}
	if got := e.tracker.of("failed"); got != "prepare release" {
		t.Errorf("VM whose launch failed: %q, want prepare and one release", got)
	}
}

// A prepare that fails releases the resources prepared before it, and
// nothing is launched.
func TestFailedPrepareReleasesTheOnesBefore(t *testing.T) {
	e := newEnv(t)
	second := &tracker{failPrepare: "bad"}
	e.m.opts.Resources = []resource.Kind{e.images, e.tracker, second}
	_, _, err := e.m.Start(context.Background(), spec("bad"))
	if err == nil || !strings.Contains(err.Error(), "no luck") {
		t.Fatalf("start = %v, want the prepare's failure", err)
	}
	if got := e.tracker.of("bad"); got != "prepare release" {
		t.Errorf("first resource: %q, want prepare and release", got)
	}
	if got := second.of("bad"); got != "prepare" {
		t.Errorf("failing resource: %q, want prepare alone", got)
	}
	if n := e.launcher.launches.Load(); n != 0 {
		t.Errorf("launched %d VMs", n)
	}
	if _, err := e.m.Get(Key{Name: "bad"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get after a failed start: %v", err)
	}
}

// A restarted cabind takes back what a running VM holds, from the state
// its record kept, and releases it when the VM stops; what a VM that died
// meanwhile held is taken back and released at once.
func TestRestartAdoptsThenReleases(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	for _, n := range []string{"keep", "dies"} {
		e.m.Start(context.Background(), spec(n))
		events.await(t, EventStarted, n)
	}
	cancel()
	e.m.Close()
	if got := e.tracker.of("keep"); got != "prepare" {
		t.Errorf("after the daemon stopped: %q, want nothing released", got)
	}
	e.launcher.get(e.root.VM(statedir.VMID("", "dies"))).exit()

	e.open()
	if got, want := e.tracker.of("dies"), `prepare adopt:"dies" release`; got != want {
		t.Errorf("VM that died meanwhile: %q, want %q", got, want)
	}
	if got, want := e.tracker.of("keep"), `prepare adopt:"keep"`; got != want {
		t.Errorf("adopted VM: %q, want %q", got, want)
	}
	if err := e.m.Stop(context.Background(), Key{Name: "keep"}); err != nil {
		t.Fatal(err)
	}
	if got, want := e.tracker.of("keep"), `prepare adopt:"keep" release`; got != want {
		t.Errorf("adopted VM after its stop: %q, want %q", got, want)
	}
}
