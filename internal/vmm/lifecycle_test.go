package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// A caller that gives up on a stop must not leave the VM half stopped:
// the ladder goes on, and the next stop waits for it instead of finding a
// VM stuck in "stopping".
func TestStopOutlivesItsCaller(t *testing.T) {
	e := newEnv(t)
	e.launcher.configure = func(f *fakeVM) { f.obeyShutdown, f.obeyQuit, f.obeyTerm = false, false, false }
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("s")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "s")

	ctx, stop := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer stop()
	if err := e.m.Stop(ctx, Key{Name: "s"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop with a short deadline = %v, want its deadline", err)
	}
	ctx2, stop2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop2()
	if err := e.m.Stop(ctx2, Key{Name: "s"}); err != nil {
		t.Fatalf("second Stop = %v, want the first's ladder to finish the VM", err)
	}
	f := e.launcher.get(e.root.VM(statedir.VMID("", "s")))
	select {
	case <-f.done:
	default:
		t.Fatalf("VM still running after both stops; steps %v", f.steps)
	}
	if n := strings.Count(strings.Join(f.steps, " "), "killed"); n != 1 {
		t.Errorf("SIGKILL sent %d times, want once: one ladder, whoever waits for it (steps %v)", n, f.steps)
	}
	if _, _, err := e.m.Start(context.Background(), spec("s")); err != nil {
		t.Errorf("start after the stop: %v", err)
	}
}

// failFirstLaunch fails the first launch, as a QEMU that cannot start.
type failFirstLaunch struct {
	*fakeLauncher
	failed atomic.Bool
}

func (f *failFirstLaunch) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	if f.failed.CompareAndSwap(false, true) {
		return nil, errors.New("qemu failed")
	}
	return f.fakeLauncher.Launch(ctx, c, cfg)
}

// A failed start announces the VM stopped; a start of the same name that
// follows at once must keep its VM, not lose it to the failed start's
// clean-up.
func TestFailedStartKeepsItsSuccessor(t *testing.T) {
	for i := 0; i < 30; i++ {
		e := newEnv(t)
		e.m.opts.Launcher = &failFirstLaunch{fakeLauncher: e.launcher}
		ch, cancel := e.m.Subscribe()
		second := make(chan error, 1)
		go func() {
			for ev := range ch {
				if ev.Kind == EventStopped && ev.Info.Name == "r" {
					_, _, err := e.m.Start(context.Background(), spec("r"))
					second <- err
					return
				}
			}
		}()
		if _, _, err := e.m.Start(context.Background(), spec("r")); err == nil {
			t.Fatal("the first start succeeded; the launcher should have failed it")
		}
		if err := <-second; err != nil {
			t.Fatalf("second start: %v", err)
		}
		cancel()
		if _, err := e.m.Get(Key{Name: "r"}); err != nil {
			t.Fatalf("run %d: the second start's VM runs but Get says %v", i, err)
		}
		e.m.StopAll(context.Background(), nil)
	}
}

// blockingImage is an image build that lasts until released or
// cancelled.
type blockingImage struct {
	kernel  string
	entered chan struct{}
	release chan struct{}
}

func (b blockingImage) Name() string { return "guest image" }

func (b blockingImage) Prepare(ctx context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	close(b.entered)
	select {
	case <-b.release:
		cfg.Kernel = b.kernel
		return nopHold{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b blockingImage) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return nopHold{}, nil
}

// Closing the manager (cabind stopping) cuts a start short instead of
// waiting for it, and the start says why.
func TestCloseDuringStart(t *testing.T) {
	e := newEnv(t)
	images := blockingImage{kernel: e.kernel, entered: make(chan struct{}), release: make(chan struct{})}
	defer close(images.release)
	e.m.opts.Resources = []resource.Kind{images}
	started := make(chan error, 1)
	go func() {
		_, _, err := e.m.Start(context.Background(), spec("c"))
		started <- err
	}()
	<-images.entered
	closed := make(chan struct{})
	go func() { e.m.Close(); close(closed) }()
	select {
	case err := <-started:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("Start cut short by Close = %v, want Unavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start still blocked 5 s after Close")
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still blocked 5 s after the start ended")
	}
}

// The manager leaves an earlier run's runtime files to the launcher,
// which first checks that no QEMU of that run still lives there: removing
// its pidfile first would let a second QEMU start in the same directory.
func TestStartLeavesStaleCheckToLauncher(t *testing.T) {
	e := newEnv(t)
	dir := e.root.VM(statedir.VMID("", "p"))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir.PIDFile(), []byte("4242\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seen := &pidfileSeer{fakeLauncher: e.launcher}
	e.m.opts.Launcher = seen
	if _, _, err := e.m.Start(context.Background(), spec("p")); err != nil {
		t.Fatal(err)
	}
	if !seen.present.Load() {
		t.Error("the earlier run's pidfile was removed before the launcher could check it")
	}
}

// pidfileSeer notes whether the VM's pidfile exists when Launch is called.
type pidfileSeer struct {
	*fakeLauncher
	present atomic.Bool
}

func (p *pidfileSeer) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	_, err := os.Stat(cfg.Dir.PIDFile())
	p.present.Store(err == nil)
	return p.fakeLauncher.Launch(ctx, c, cfg)
}

// Events of one VM come in the order its state changed, even when a stop
// and the guest powering off on its own race: Started (if any) before
// Stopping, Stopping (if any) before Stopped, Stopped last.
func TestEventOrderUnderRaces(t *testing.T) {
	e := newEnv(t)
	ch, cancel := e.m.Subscribe()
	defer cancel()
	for i := 0; i < 20; i++ {
		if _, _, err := e.m.Start(context.Background(), spec("o")); err != nil {
			t.Fatal(err)
		}
		f := e.launcher.get(e.root.VM(statedir.VMID("", "o")))
		var kinds []EventKind
		for ev := range ch {
			if ev.Info.Name != "o" {
				continue
			}
			kinds = append(kinds, ev.Kind)
			if ev.Kind == EventStarted {
				break
			}
		}
		go f.exit()
		if err := e.m.Stop(context.Background(), Key{Name: "o"}); err != nil {
			t.Fatal(err)
		}
		for ev := range ch {
			if ev.Info.Name != "o" {
				continue
			}
			kinds = append(kinds, ev.Kind)
			if ev.Kind == EventStopped {
				break
			}
		}
		if !validOrder(kinds) {
			t.Fatalf("run %d: events %v out of order", i, kinds)
		}
	}
}

func validOrder(kinds []EventKind) bool {
	pos := func(k EventKind) int { return slices.Index(kinds, k) }
	if len(kinds) == 0 || kinds[len(kinds)-1] != EventStopped || pos(EventStopped) != len(kinds)-1 {
		return false
	}
	if s, p := pos(EventStarted), pos(EventStopping); s >= 0 && p >= 0 && s > p {
		return false
	}
	return pos(EventStartingUp) == 0
}

// resumeCounter counts Resume calls on the VMs it launches or adopts.
type resumeCounter struct {
	*fakeLauncher
	resumes atomic.Int32
}

type countedVM struct {
	*fakeVM
	n *atomic.Int32
}

func (c countedVM) Resume(ctx context.Context) error {
	c.n.Add(1)
	return c.fakeVM.Resume(ctx)
}

func (r *resumeCounter) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	v, err := r.fakeLauncher.Launch(ctx, c, cfg)
	if err != nil {
		return nil, err
	}
	return countedVM{v.(*fakeVM), &r.resumes}, nil
}

func (r *resumeCounter) Adopt(ctx context.Context, dir statedir.VMDir, startTime uint64) (hypervisor.VM, error) {
	v, err := r.fakeLauncher.Adopt(ctx, dir, startTime)
	if err != nil {
		return nil, err
	}
	return countedVM{v.(*fakeVM), &r.resumes}, nil
}

// A daemon that adopts a VM whose guest has not reported in yet resumes
// it (a daemon stopped between launching QEMU and resuming it leaves it
// paused) and gives it the start's own timeout, not the default.
func TestAdoptBootingVM(t *testing.T) {
	e := newEnv(t)
	e.guests.reportReady = false
	counter := &resumeCounter{fakeLauncher: e.launcher}
	e.m.opts.Launcher = counter
	s := spec("b")
	s.Timeout = time.Hour
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	e.m.Close()
	// Seventy seconds into the boot: past the default wait, well inside
	// the start's own.
	dir := e.root.VM(statedir.VMID("", "b"))
	rec, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec.StartedAt = rec.StartedAt.Add(-70 * time.Second)
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	before := counter.resumes.Load()

	m, err := New(e.m.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	events, cancel := watch(m)
	defer cancel()
	if err := m.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	settle(t, m)
	if got := counter.resumes.Load() - before; got != 1 {
		t.Errorf("resumed %d times on adoption, want 1", got)
	}
	select {
	case ev := <-events.ch:
		if ev.Info.Name == "b" && (ev.Kind == EventStopping || ev.Kind == EventStopped) {
			t.Fatalf("adopted VM stopped (event %v) though its start allowed an hour", ev.Kind)
		}
	case <-time.After(500 * time.Millisecond):
	}
	if info, err := m.Get(Key{Name: "b"}); err != nil || info.State != StateStarting {
		t.Errorf("adopted booting VM: %+v, %v; want it starting", info, err)
	}
}

// A VM whose hypervisor does not answer (a stopped QEMU) keeps neither the
// daemon from serving nor the other VMs from being adopted; it is listed
// unreachable, saying why, and a start of its name is refused without
// touching its directory; it is taken back once it answers again, and a
// stop ends it either way.
func TestUnreachableVM(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	for _, n := range []string{"hung", "fine", "doomed"} {
		if _, _, err := e.m.Start(context.Background(), spec(n)); err != nil {
			t.Fatal(err)
		}
		events.await(t, EventStarted, n)
	}
	cancel()
	e.m.Close()
	hungDir := e.root.VM(statedir.VMID("", "hung"))
	hung := e.launcher.get(hungDir)
	hung.hung.Store(true)
	e.launcher.get(e.root.VM(statedir.VMID("", "doomed"))).hung.Store(true)
	recBefore, err := os.ReadFile(hungDir.Record())
	if err != nil {
		t.Fatal(err)
	}

	m, err := New(e.m.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.adoptTimeout = 300 * time.Millisecond
	m.adoptRetry = 50 * time.Millisecond
	m.ladder = e.m.ladder
	start := time.Now()
	if err := m.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > m.adoptTimeout/2 {
		t.Errorf("Adopt took %v: it waited for the VMs", took)
	}
	if _, err := m.Get(Key{Name: "fine"}); err != nil {
		t.Errorf("the other VM was not adopted: %v", err)
	}
	info, err := m.Get(Key{Name: "hung"})
	if err != nil || info.State != StateUnreachable || !strings.Contains(info.Problem, "does not answer") {
		t.Fatalf("hung VM: %+v, %v; want it unreachable, saying why", info, err)
	}
	if list := m.List(""); len(list) != 3 {
		t.Errorf("List = %+v, want all three VMs", list)
	}

	// A start of its name is refused and leaves its directory alone.
	launches := e.launcher.launches.Load()
	_, _, err = m.Start(context.Background(), spec("hung"))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("start of the unreachable VM: %v, want a failed precondition saying it is unreachable", err)
	}
	if n := e.launcher.launches.Load(); n != launches {
		t.Errorf("launched %d VMs", n-launches)
	}
	if rec, _ := os.ReadFile(hungDir.Record()); !slices.Equal(rec, recBefore) {
		t.Errorf("record rewritten:\n%s\nwas\n%s", rec, recBefore)
	}
	select {
	case <-hung.done:
		t.Fatal("the refused start ended the VM")
	default:
	}

	// It answers again: it is taken back.
	hung.hung.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := m.Get(Key{Name: "hung"})
		if err == nil && info.State == StateRunning && info.Problem == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM not taken back once it answered: %+v, %v", info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// One that never answers is still ended by a stop, by signals.
	if err := m.Stop(context.Background(), Key{Name: "doomed"}); err != nil {
		t.Fatalf("stop of an unreachable VM: %v", err)
	}
	doomed := e.launcher.get(e.root.VM(statedir.VMID("", "doomed")))
	select {
	case <-doomed.done:
	default:
		t.Fatal("the stopped VM still runs")
	}
	if steps := doomed.stepsSoFar(); !slices.Contains(steps, "terminated") {
		t.Errorf("steps %v: want it ended by SIGTERM", steps)
	}
	if got := e.tracker.of("doomed"); !strings.HasSuffix(got, "release") {
		t.Errorf("the stopped VM's resources: %q, want them released", got)
	}
}

// Calls about a VM still being taken back wait for it, a bounded time, and
// say so when it takes longer.
func TestCallsWaitForAdoption(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	e.m.Start(context.Background(), spec("slow"))
	events.await(t, EventStarted, "slow")
	cancel()
	e.m.Close()
	e.launcher.get(e.root.VM(statedir.VMID("", "slow"))).hung.Store(true)

	m, err := New(e.m.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.adoptTimeout = 2 * time.Second
	if err := m.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if list := m.List(""); len(list) != 1 || list[0].State != StateAdopting {
		t.Errorf("List during the adoption = %+v, want the VM adopting, without waiting", list)
	}
	ctx, cancelCtx := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelCtx()
	if _, err := m.Guest(ctx, Key{Name: "slow"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Guest with a short deadline during the adoption = %v, want the deadline", err)
	}
	start := time.Now()
	info, err := m.Get(Key{Name: "slow"})
	if err != nil || info.State != StateUnreachable {
		t.Errorf("Get after waiting = %+v, %v; want it unreachable", info, err)
	}
	if took := time.Since(start); took > m.adoptTimeout+2*time.Second {
		t.Errorf("Get waited %v", took)
	}
}
