package vmm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

type env struct {
	t        *testing.T
	root     statedir.Root
	launcher *fakeLauncher
	guests   *fakeGuests
	images   *fakeImage
	tracker  *tracker
	m        *Manager
	kernel   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := statedirtest.New(t)
	kernel := filepath.Join(root.Dir(), "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	rootfs := filepath.Join(root.ImageDir(), "rootfs", "gen1")
	os.MkdirAll(rootfs, 0o755)
	launcher := &fakeLauncher{t: t, vms: map[string]*fakeVM{}}
	e := &env{t: t, root: root, kernel: kernel, images: &fakeImage{kernel: kernel, rootfs: rootfs},
		launcher: launcher, tracker: &tracker{},
		guests: &fakeGuests{launcher: launcher, reportReady: true}}
	e.guests.m = func() *Manager { return e.m }
	e.open()
	return e
}

// options are the manager's options in env.
func (e *env) options() Options {
	return Options{
		Root: e.root, Launcher: e.launcher, Resources: []resource.Kind{e.images, e.tracker}, Guests: e.guests,
		Accel: hypervisor.AccelTCG, Host: Host{CPUs: 4, MemoryMiB: 4096}, DefaultMemoryMiB: 256,
		Timezone: "Europe/Paris", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// open starts a manager (again) on the env's state dir.
func (e *env) open() {
	e.t.Helper()
	m, err := New(e.options())
	if err != nil {
		e.t.Fatal(err)
	}
	m.ladder = ladder{shutdownRPC: 2 * time.Second, step: 200 * time.Millisecond}
	e.m = m
	e.t.Cleanup(m.Close)
	if err := m.Adopt(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	settle(e.t, m)
}

// settle waits until every VM m is taking back has had its first attempt,
// for the tests that restart a daemon to see what it then knows.
func settle(t *testing.T, m *Manager) {
	t.Helper()
	m.mu.Lock()
	var vs []*vm
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	for _, v := range vs {
		select {
		case <-v.launched:
		case <-time.After(10 * time.Second):
			t.Fatalf("vm %s not adopted after 10 s", v.key)
		}
	}
}

func spec(name string) Spec { return Spec{Key: Key{Name: name}, CPUs: 1} }

// watcher reads events and keeps those not yet asked for.
type watcher struct {
	ch      <-chan Event
	pending []Event
}

func watch(m *Manager) (*watcher, func()) {
	ch, cancel := m.Subscribe()
	return &watcher{ch: ch}, cancel
}

// await returns the first event of kind for name, failing after 10 s.
func (w *watcher) await(t *testing.T, kind EventKind, name string) Event {
	t.Helper()
	match := func(e Event) bool { return e.Kind == kind && e.Info.Name == name }
	for i, e := range w.pending {
		if match(e) {
			w.pending = append(w.pending[:i], w.pending[i+1:]...)
			return e
		}
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-w.ch:
			if !ok {
				t.Fatal("event stream closed")
			}
			if match(e) {
				return e
			}
			w.pending = append(w.pending, e)
		case <-timeout:
			t.Fatalf("no event %d for %s", kind, name)
		}
	}
}

func TestStartPublishesEventsAndRuns(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	info, started, err := e.m.Start(context.Background(), spec("a"))
	if err != nil || !started {
		t.Fatalf("Start: %v, %v", started, err)
	}
	// The fake agent reports at once: it may have before Start returns.
	if (info.State != StateStarting && info.State != StateRunning) || info.CID != firstCID || info.MemoryMiB != 256 {
		t.Errorf("info after start: state %v, cid %d, %d MiB", info.State, info.CID, info.MemoryMiB)
	}
	events.await(t, EventStartingUp, "a")
	ev := events.await(t, EventStarted, "a")
	if ev.Info.State != StateRunning {
		t.Errorf("started event state %v", ev.Info.State)
	}
	got, err := e.m.Get(Key{Name: "a"})
	if err != nil || got.State != StateRunning || got.PID == 0 {
		t.Errorf("Get: %+v, %v", got, err)
	}
	// Bring-up gave the guest the host's time zone before Started.
	if f := e.launcher.get(e.root.VM(statedir.VMID("", "a"))); !slices.Contains(f.stepsSoFar(), "timezone Europe/Paris") {
		t.Errorf("bring-up steps %v: no timezone", f.stepsSoFar())
	}
	// The record on disk says how to re-adopt it.
	rec, err := readRecord(e.root.VM(statedir.VMID("", "a")))
	if err != nil || !rec.Alive || !rec.Ready || rec.PID != got.PID || rec.StartTime == 0 {
		t.Errorf("record %+v, %v", rec, err)
	}
	// Starting it again is idempotent.
	again, started, err := e.m.Start(context.Background(), spec("a"))
	if err != nil || started || again.PID != got.PID {
		t.Errorf("second Start: %+v, %v, %v", again, started, err)
	}
	// The next VM gets the next CID.
	b, _, err := e.m.Start(context.Background(), spec("b"))
	if err != nil || b.CID != firstCID+1 {
		t.Errorf("second VM: %+v, %v", b, err)
	}
	if list := e.m.List(""); len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
		t.Errorf("List = %+v", list)
	}
	if list := e.m.List("someone"); len(list) != 0 {
		t.Errorf("List(other owner) = %+v", list)
	}
}

func TestConcurrentStartsLaunchOnce(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	pids := make([]int, 8)
	for i := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, _, err := e.m.Start(context.Background(), spec("same"))
			if err != nil {
				t.Error(err)
			}
			pids[i] = info.PID
		}()
	}
	wg.Wait()
	if n := e.launcher.launches.Load(); n != 1 {
		t.Fatalf("%d launches, want 1", n)
	}
	for _, p := range pids {
		if p != pids[0] {
			t.Fatalf("starts saw different pids: %v", pids)
		}
	}
}

func TestStopLadder(t *testing.T) {
	for _, c := range []struct {
		name  string
		obey  func(*fakeVM)
		steps string
	}{
		{"guest shuts down", func(f *fakeVM) {}, "shutdown"},
		{"quit", func(f *fakeVM) { f.obeyShutdown = false }, "shutdown quit"},
		{"sigterm", func(f *fakeVM) { f.obeyShutdown, f.obeyQuit = false, false }, "shutdown quit terminated"},
		{"sigkill", func(f *fakeVM) { f.obeyShutdown, f.obeyQuit, f.obeyTerm = false, false, false }, "shutdown quit terminated killed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.launcher.configure = c.obey
			events, cancel := watch(e.m)
			defer cancel()
			if _, _, err := e.m.Start(context.Background(), spec("s")); err != nil {
				t.Fatal(err)
			}
			events.await(t, EventStarted, "s")
			if err := e.m.Stop(context.Background(), Key{Name: "s"}); err != nil {
				t.Fatal(err)
			}
			f := e.launcher.get(e.root.VM(statedir.VMID("", "s")))
			steps := slices.DeleteFunc(f.stepsSoFar(), func(s string) bool { return strings.HasPrefix(s, "timezone") })
			if got := strings.Join(steps, " "); got != c.steps {
				t.Errorf("steps %q, want %q", got, c.steps)
			}
			events.await(t, EventStopping, "s")
			if ev := events.await(t, EventStopped, "s"); ev.Reason != StopRequested {
				t.Errorf("reason %v", ev.Reason)
			}
			if _, err := e.m.Get(Key{Name: "s"}); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Get after stop: %v", err)
			}
			if got := e.tracker.of("s"); got != "prepare release" {
				t.Errorf("the VM's resource went through %q, want prepare and one release", got)
			}
		})
	}
}

func TestStopUnknownSucceeds(t *testing.T) {
	e := newEnv(t)
	if err := e.m.Stop(context.Background(), Key{Name: "ghost"}); err != nil {
		t.Fatal(err)
	}
}

func TestExitOnItsOwnIsVMExited(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	e.m.Start(context.Background(), spec("x"))
	events.await(t, EventStarted, "x")
	dir := e.root.VM(statedir.VMID("", "x"))
	// QEMU's own last words, which the note quotes.
	if err := os.WriteFile(dir.QEMULog(), []byte("\nqemu-system-x86_64: terminating on signal 9\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.launcher.get(dir).exit()
	ev := events.await(t, EventStopped, "x")
	if ev.Reason != StopExited {
		t.Errorf("reason %v, want StopExited", ev.Reason)
	}
	want := "QEMU exited on its own; its log ends: qemu-system-x86_64: terminating on signal 9"
	if ev.Detail != want {
		t.Errorf("detail %q, want %q", ev.Detail, want)
	}
	if logs, _ := e.m.Logs(Key{Name: "x"}); !strings.Contains(string(logs), "cabind: "+want) {
		t.Errorf("console log lacks cabind's note: %q", logs)
	}
}

func TestStartTimeoutStopsVM(t *testing.T) {
	e := newEnv(t)
	e.guests.reportReady = false
	events, cancel := watch(e.m)
	defer cancel()
	s := spec("slow")
	s.Timeout = 300 * time.Millisecond
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	ev := events.await(t, EventStopped, "slow")
	if ev.Reason != StopExited || !strings.Contains(ev.Detail, "did not report within the start timeout (300ms)") {
		t.Errorf("stopped %v %q, want VM_EXITED with the start timeout in words", ev.Reason, ev.Detail)
	}
	if logs, _ := e.m.Logs(Key{Name: "slow"}); !strings.Contains(string(logs), "cabind: the guest agent did not report") {
		t.Errorf("console log lacks the timeout: %q", logs)
	}
	f := e.launcher.get(e.root.VM(statedir.VMID("", "slow")))
	if steps := f.stepsSoFar(); slices.Contains(steps, "shutdown") {
		t.Errorf("asked a guest that never reported to shut down: %v", steps)
	}
}

func TestRestartAdoptsRunningVMs(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	e.m.Start(context.Background(), spec("keep"))
	e.m.Start(context.Background(), spec("dies"))
	events.await(t, EventStarted, "keep")
	events.await(t, EventStarted, "dies")
	cancel()
	before, _ := e.m.Get(Key{Name: "keep"})

	e.m.Close()
	keep := e.launcher.get(e.root.VM(statedir.VMID("", "keep")))
	if !keep.closed.Load() {
		t.Error("Close did not release the hypervisor connection")
	}
	select {
	case <-keep.done:
		t.Fatal("Close stopped a VM")
	default:
	}
	// One VM dies while no daemon watches.
	e.launcher.get(e.root.VM(statedir.VMID("", "dies"))).exit()

	e.open()
	after, err := e.m.Get(Key{Name: "keep"})
	if err != nil || after.PID != before.PID || after.State != StateRunning || !after.Adopted {
		t.Fatalf("adopted: %+v, %v", after, err)
	}
	if _, err := e.m.Get(Key{Name: "dies"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("dead VM: %v", err)
	}
	rec, _ := readRecord(e.root.VM(statedir.VMID("", "dies")))
	if rec == nil || rec.Alive {
		t.Errorf("dead VM's record: %+v", rec)
	}
	// The guest link is made again: the agent is reachable again.
	ctx, cancelCtx := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelCtx()
	if dials := e.guests.dials.Load(); dials != 3 {
		t.Errorf("%d guest links dialed, want one per launch and one for the adopted VM", dials)
	}
	if g, err := e.m.Guest(ctx, Key{Name: "keep"}); err != nil || g.(*fakeLink).closed.Load() {
		t.Fatalf("guest after adoption: %v, %v; want a link not closed", g, err)
	}
	// New VMs do not reuse CIDs.
	n, _, err := e.m.Start(context.Background(), spec("new"))
	if err != nil || n.CID != firstCID+2 {
		t.Errorf("new VM after restart: %+v, %v", n, err)
	}
	if err := e.m.Stop(context.Background(), Key{Name: "keep"}); err != nil {
		t.Errorf("stop adopted VM: %v", err)
	}
}

func TestBadSpecs(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		mutate func(*Spec)
		field  string
	}{
		{func(s *Spec) { s.Name = "" }, "name"},
		{func(s *Spec) { s.Name = "." }, "name"},
		{func(s *Spec) { s.Name = ".." }, "name"},
		{func(s *Spec) { s.Name = "/" }, "name"},
		{func(s *Spec) { s.Name = "a/b" }, "name"},
		{func(s *Spec) { s.Name = "a\x00b" }, "name"},
		{func(s *Spec) { s.Name = "bell\a" }, "name"},
		{func(s *Spec) { s.Name = strings.Repeat("n", 61) }, "name"},
		{func(s *Spec) { s.Name = "\xff" }, "name"},
		// Issue 22's names: two that listed alike, one that metadata
		// cannot carry, one that reads as a flag.
		{func(s *Spec) { s.Name = "r1 " }, "name"},
		{func(s *Spec) { s.Name = "ünï€" }, "name"},
		{func(s *Spec) { s.Name = "-x" }, "name"},
		{func(s *Spec) { s.Owner = "o/../x" }, "owner_id"},
		{func(s *Spec) { s.Owner = "o wner" }, "owner_id"},
		{func(s *Spec) { s.Owner = "ünï" }, "owner_id"},
		{func(s *Spec) { s.CPUs = 0 }, "cpus"},
		{func(s *Spec) { s.CPUs = 5 }, "cpus"},
		{func(s *Spec) { s.MemoryMiB = 63 }, "memory_mib"},
		{func(s *Spec) { s.MemoryMiB = 4097 }, "memory_mib"},
		{func(s *Spec) { s.Kernel = "/no/such/kernel" }, "kernel_path"},
		{func(s *Spec) { s.Kernel = "relative" }, "kernel_path"},
		{func(s *Spec) { s.Kernel = "/tmp" }, "kernel_path"},
		{func(s *Spec) { s.Initrd = "/etc/hostname" }, "initrd_path"},
		{func(s *Spec) { s.KernelParams = []string{"init=/bin/sh"} }, "kernel_params[0]"},
		{func(s *Spec) { s.KernelParams = []string{"quiet", "two words"} }, "kernel_params[1]"},
		{func(s *Spec) { s.KernelParams = []string{"cabin.mode=echo"} }, "kernel_params[0]"},
		{func(s *Spec) { s.Accel = "xen" }, "accelerator"},
	} {
		s := spec("good")
		c.mutate(&s)
		_, _, err := e.m.Start(context.Background(), s)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("spec %+v: error %v, want invalid argument naming %s", s, err, c.field)
		}
	}
	if n := e.launcher.launches.Load(); n != 0 {
		t.Errorf("bad specs launched %d VMs", n)
	}
	if entries, _ := os.ReadDir(e.root.VMsDir()); len(entries) != 0 {
		t.Errorf("bad specs left %d VM dirs", len(entries))
	}
	ok := spec("A." + strings.Repeat("n_-", 19) + "9")
	if _, _, err := e.m.Start(context.Background(), ok); err != nil {
		t.Errorf("60-character name: %v", err)
	}
}

func TestCallerMustReadKernel(t *testing.T) {
	e := newEnv(t)
	os.Chmod(filepath.Dir(e.kernel), 0o755)
	os.Chmod(e.kernel, 0o600)
	s := spec("k")
	s.Kernel = e.kernel
	s.Caller = &caller.Caller{UID: 12345, GIDs: []uint32{12345}}
	if _, _, err := e.m.Start(context.Background(), s); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unreadable kernel: %v", err)
	}
	os.Chmod(e.kernel, 0o644)
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Errorf("readable kernel: %v", err)
	}
}

func TestLogs(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.Logs(Key{Name: "none"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("logs of unknown VM: %v", err)
	}
	if _, err := e.m.Logs(Key{Name: ".."}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("logs of bad name: %v", err)
	}
	e.m.Start(context.Background(), spec("l"))
	dir := e.root.VM(statedir.VMID("", "l"))
	os.WriteFile(dir.RotatedLog(1), []byte("old\n"), 0o644)
	os.WriteFile(dir.ConsoleLog(), []byte("new\n"), 0o644)
	got, err := e.m.Logs(Key{Name: "l"})
	if err != nil || string(got) != "old\nnew\n" {
		t.Errorf("Logs = %q, %v", got, err)
	}
}

// TestKVMRefusedWhereUnusable asks for KVM on a host where detection found
// it cannot run guests: a failed precondition giving the reason, and
// nothing launched or created. Where it can, the same spec starts.
func TestKVMRefusedWhereUnusable(t *testing.T) {
	e := newEnv(t)
	e.m.opts.Host.NoKVM = "cpu lacks vmx/svm"
	s := spec("k")
	s.Accel = hypervisor.AccelKVM
	_, _, err := e.m.Start(context.Background(), s)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "cpu lacks vmx/svm") {
		t.Errorf("KVM where unusable: %v, want a failed precondition with the reason", err)
	}
	if n := e.launcher.launches.Load(); n != 0 {
		t.Errorf("launched %d VMs", n)
	}
	if entries, _ := os.ReadDir(e.root.VMsDir()); len(entries) != 0 {
		t.Errorf("left %d VM dirs", len(entries))
	}

	e.m.opts.Host.NoKVM = ""
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Errorf("KVM where usable: %v", err)
	}
}

// TestStartSharesRootfs: every VM gets the image's container root
// filesystems as a read-only share, also one booting its own kernel; the
// record keeps the share, so a restarted daemon still counts it in use
// (SharedDirs) while the VM lives, and no longer once it stopped.
func TestStartSharesRootfs(t *testing.T) {
	e := newEnv(t)
	want := []hypervisor.Share{{Tag: bootcfg.RootfsTag, Path: e.images.rootfs, ReadOnly: true}}
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("img")); err != nil {
		t.Fatal(err)
	}
	own := spec("own")
	own.Kernel = e.kernel
	if _, _, err := e.m.Start(context.Background(), own); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"img", "own"} {
		dir := e.root.VM(statedir.VMID("", name))
		if got := e.launcher.get(dir).cfg.Shares; !slices.Equal(got, want) {
			t.Errorf("%s launched with shares %+v, want %+v", name, got, want)
		}
		rec, err := readRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Shares) != 1 || rec.Shares[0] != (recordShare{Tag: bootcfg.RootfsTag, Path: e.images.rootfs, ReadOnly: true}) {
			t.Errorf("%s's record keeps shares %+v", name, rec.Shares)
		}
		events.await(t, EventStarted, name)
	}
	if dirs, err := e.m.SharedDirs(); err != nil || !slices.Equal(dirs, []string{e.images.rootfs}) {
		t.Errorf("SharedDirs = %q, %v; want the rootfs once", dirs, err)
	}

	// Without the image's root filesystems, a VM with a kernel of its
	// own starts without the share.
	e.images.mu.Lock()
	e.images.rootfsErr = errors.New("mirror down")
	e.images.mu.Unlock()
	bare := spec("bare")
	bare.Kernel = e.kernel
	if _, _, err := e.m.Start(context.Background(), bare); err != nil {
		t.Fatalf("start without the root filesystems: %v", err)
	}
	if got := e.launcher.get(e.root.VM(statedir.VMID("", "bare"))).cfg.Shares; len(got) != 0 {
		t.Errorf("launched with shares %+v, want none", got)
	}

	// A restarted daemon, before and after adopting: the running VMs'
	// records name the share.
	e.m.Close()
	e.images.rootfs = filepath.Join(e.root.ImageDir(), "rootfs", "gen2")
	e.open()
	if dirs, err := e.m.SharedDirs(); err != nil || !slices.Equal(dirs, []string{filepath.Join(e.root.ImageDir(), "rootfs", "gen1")}) {
		t.Errorf("SharedDirs after a restart = %q, %v; want the first generation", dirs, err)
	}
	for _, name := range []string{"img", "own"} {
		if err := e.m.Stop(context.Background(), Key{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	if dirs, err := e.m.SharedDirs(); err != nil || len(dirs) != 0 {
		t.Errorf("SharedDirs with the sharing VMs stopped = %q, %v; want none", dirs, err)
	}

	// A record that cannot be read may be a running VM's: SharedDirs
	// cannot say, and says so.
	if err := os.WriteFile(e.root.VM(statedir.VMID("", "bare")).Record(), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.SharedDirs(); err == nil {
		t.Error("SharedDirs with an unreadable record succeeded")
	}
}
