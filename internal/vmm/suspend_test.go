package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// startRunning starts name in e and waits until it runs.
func startRunning(t *testing.T, e *env, name string) *fakeVM {
	t.Helper()
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec(name)); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, name)
	return e.launcher.get(e.root.VM(statedir.VMID("", name)))
}

// The guest is told first, then the vCPUs stop; a second suspend does
// nothing; resume runs them again. The state stays running throughout,
// with Suspended saying the rest, in memory and in the record.
func TestSuspendResume(t *testing.T) {
	e := newEnv(t)
	f := startRunning(t, e, "a")
	key := Key{Name: "a"}
	ctx := context.Background()
	if err := e.m.Suspend(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Suspend(ctx, key); err != nil {
		t.Fatalf("second suspend: %v", err)
	}
	steps := strings.Join(f.stepsSoFar(), ", ")
	if !strings.HasSuffix(steps, "prepare to suspend, pause") {
		t.Errorf("steps %q: want the guest told, then one pause", steps)
	}
	info, err := e.m.Get(key)
	if err != nil || info.State != StateRunning || !info.Suspended {
		t.Fatalf("suspended VM: %+v, %v", info, err)
	}
	if rec, _ := readRecord(e.root.VM(statedir.VMID("", "a"))); rec == nil || !rec.Suspended {
		t.Errorf("record of a suspended VM: %+v", rec)
	}
	if err := e.m.Resume(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Resume(ctx, key); err != nil {
		t.Fatalf("resume of a running VM: %v", err)
	}
	if n := strings.Count(strings.Join(f.stepsSoFar(), ","), "cont"); n != 1 {
		t.Errorf("steps %q: want one cont", f.stepsSoFar())
	}
	if info, _ := e.m.Get(key); info.Suspended {
		t.Error("resumed VM still suspended")
	}
	if rec, _ := readRecord(e.root.VM(statedir.VMID("", "a"))); rec == nil || rec.Suspended {
		t.Errorf("record of a resumed VM: %+v", rec)
	}
	for _, call := range []func(context.Context, Key) error{e.m.Suspend, e.m.Resume} {
		if err := call(ctx, Key{Name: "ghost"}); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("unknown VM: %v, want NotFound", err)
		}
	}
}

// A suspended VM is stopped by resuming it first, so that its guest
// shuts down cleanly, not by waiting out the Shutdown RPC.
func TestStopSuspendedResumesFirst(t *testing.T) {
	e := newEnv(t)
	f := startRunning(t, e, "a")
	key := Key{Name: "a"}
	if err := e.m.Suspend(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Stop(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	steps := f.stepsSoFar()
	i, j := slices.Index(steps, "cont"), slices.Index(steps, "shutdown")
	if i < 0 || j < i || slices.Contains(steps, "shutdown unanswered") {
		t.Errorf("steps %q: want cont, then a shutdown the guest answers", steps)
	}
}

// A restarted manager learns from the hypervisor that a VM is suspended,
// whatever its record says, and resumes it.
func TestAdoptSuspended(t *testing.T) {
	e := newEnv(t)
	f := startRunning(t, e, "a")
	key := Key{Name: "a"}
	if err := e.m.Suspend(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	e.m.Close()
	// The record was lost to a crash between pause and write: the
	// hypervisor's word stands.
	dir := e.root.VM(statedir.VMID("", "a"))
	rec, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec.Suspended = false
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	e.open()
	info, err := e.m.Get(key)
	if err != nil || info.State != StateRunning || !info.Suspended || !info.Adopted {
		t.Fatalf("adopted suspended VM: %+v, %v", info, err)
	}
	// Its guest link was made while it was paused: the guest cannot
	// have seen the old one go. Resume makes it again.
	dials := e.guests.dials.Load()
	if err := e.m.Resume(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if f.paused.Load() {
		t.Error("the adopted VM is still paused after Resume")
	}
	if n := e.guests.dials.Load(); n != dials+1 {
		t.Errorf("%d guest links dialed on Resume, want one", n-dials)
	}
	if g, err := e.m.Guest(context.Background(), key); err != nil || g.(*fakeLink).closed.Load() {
		t.Errorf("guest link after Resume: %v, %v", g, err)
	}
	// And the other way: a record saying suspended of a VM that runs.
	e.m.Close()
	rec, _ = readRecord(dir)
	rec.Suspended = true
	writeRecord(dir, rec)
	e.open()
	if info, _ := e.m.Get(key); info.Suspended {
		t.Errorf("adopted running VM reported suspended: %+v", info)
	}
}

// Calls that need a running VM refuse one that is starting or stopping,
// at once, saying so.
func TestCallsOnStartingAndStoppingVMs(t *testing.T) {
	e := newEnv(t)
	e.guests.reportReady = false
	if _, _, err := e.m.Start(context.Background(), spec("starting")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	key := Key{Name: "starting"}
	calls := map[string]func() error{
		"suspend":        func() error { return e.m.Suspend(ctx, key) },
		"resume":         func() error { return e.m.Resume(ctx, key) },
		"kernel version": func() error { _, err := e.m.KernelVersion(ctx, key); return err },
		"set up user":    func() error { _, err := e.m.SetUpUser(ctx, key, User{Name: "alice"}); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "starting") {
			t.Errorf("%s of a starting VM: %v", name, err)
		}
	}
	n, failures := e.m.SyncTimes(ctx, nil)
	if n != 1 || len(failures) != 1 || !strings.Contains(failures[0].Error(), "starting") {
		t.Errorf("SyncTimes with a starting VM: %d, %v", n, failures)
	}
}

func TestUserValidation(t *testing.T) {
	for _, ok := range []string{"a", "alice", "bob-2", "x_y", "machine$", strings.Repeat("a", MaxUserName)} {
		u := User{Name: ok}
		if err := u.Validate(); err != nil || u.UID != DefaultUID {
			t.Errorf("%q: %v, uid %d", ok, err, u.UID)
		}
	}
	for _, bad := range []User{
		{Name: ""}, {Name: "Alice"}, {Name: "1abc"}, {Name: "-x"}, {Name: "a b"}, {Name: "a$b"}, {Name: "a;rm"},
		{Name: "a/b"}, {Name: "ünï"}, {Name: strings.Repeat("a", MaxUserName+1)},
		{Name: "ok", UID: 0, HasUID: true}, {Name: "ok", UID: 1 << 31, HasUID: true},
		{Name: "ok", Groups: []string{"wheel", "bad group"}}, {Name: "ok", Groups: []string{"-g"}},
		{Name: "ok", Groups: make([]string, MaxUserGroups+1)},
	} {
		if err := bad.Validate(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
}

func FuzzValidUserName(f *testing.F) {
	for _, s := range []string{"alice", "a$", "$", "a-b_c", "A", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidUserName(s) {
			return
		}
		if strings.ContainsAny(s, " \t\n;&|<>'\"\\/`*?:,.") || len(s) > MaxUserName || s[0] < 'a' || s[0] > 'z' {
			t.Fatalf("%q accepted", s)
		}
	})
}

func TestGPUCache(t *testing.T) {
	e := newEnv(t)
	boot := filepath.Join(t.TempDir(), "boot_id")
	os.WriteFile(boot, []byte("0f0e0d0c-1111-2222-3333-444455556666\n"), 0o644)
	e.m.bootIDFile = boot
	key := Key{Name: "a"}
	if _, err := e.m.GPUCachePath(key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("cache of a VM that never ran: %v", err)
	}
	startRunning(t, e, "a")
	p, err := e.m.GPUCachePath(key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(p)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 || !strings.HasPrefix(p, e.root.GPUCacheDir()+"/") {
		t.Fatalf("cache %s: %v, %v", p, st, err)
	}
	// Kept when the VM stops, as upstream keeps it.
	e.m.Stop(context.Background(), key)
	if again, err := e.m.GPUCachePath(key); err != nil || again != p {
		t.Errorf("cache of a stopped VM: %s, %v", again, err)
	}
	// A new boot's first cache removes the earlier boots'.
	os.WriteFile(boot, []byte("0f0e0d0c-1111-2222-3333-777777777777\n"), 0o644)
	startRunning(t, e, "a")
	q, err := e.m.GPUCachePath(key)
	if err != nil || q == p {
		t.Fatalf("cache in a new boot: %s, %v", q, err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("earlier boot's cache kept: %v", err)
	}
	// Removed with the VM's disk.
	e.m.Stop(context.Background(), key)
	e.m.RemoveGPUCache(key)
	if _, err := e.m.GPUCachePath(key); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("cache after RemoveGPUCache: %v", err)
	}
	// A junk boot id is refused rather than used.
	os.WriteFile(boot, []byte("../../etc"), 0o644)
	if _, err := e.m.GPUCachePath(key); err == nil {
		t.Error("junk boot id accepted")
	}
}

func TestCrostiniType(t *testing.T) {
	e := newEnv(t)
	if err := e.m.SetCrostiniType("", VMTypeBaguette); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no Termina VM yet: %v", err)
	}
	startRunning(t, e, TerminaName)
	if err := e.m.SetCrostiniType("", VMTypeBaguette); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("while it runs: %v", err)
	}
	e.m.Stop(context.Background(), Key{Name: TerminaName})
	if err := e.m.SetCrostiniType("", VMTypeBaguette); err != nil {
		t.Fatal(err)
	}
	if err := e.m.SetCrostiniType("", VMType(99)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("type 99: %v", err)
	}
	// The next start that names no type takes it, and reports it.
	startRunning(t, e, TerminaName)
	if info, _ := e.m.Get(Key{Name: TerminaName}); info.Type != VMTypeBaguette {
		t.Errorf("type after SetCrostiniType: %v", info.Type)
	}
}

func TestLaunchAllowed(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	e.m.meminfoFile = filepath.Join(dir, "meminfo")
	e.m.vulnDir = filepath.Join(dir, "vuln")
	os.Mkdir(e.m.vulnDir, 0o755)
	os.WriteFile(e.m.meminfoFile, []byte("MemTotal: 1000000 kB\nMemAvailable: 900000 kB\n"), 0o644)
	os.WriteFile(filepath.Join(e.m.vulnDir, "l1tf"), []byte("Not affected\n"), 0o644)
	if ok, why := e.m.LaunchAllowed(); !ok {
		t.Fatalf("refused: %s", why)
	}
	os.WriteFile(e.m.meminfoFile, []byte("MemAvailable: 1000 kB\n"), 0o644)
	if ok, why := e.m.LaunchAllowed(); ok || !strings.Contains(why, "memory") {
		t.Errorf("little memory: %v %q", ok, why)
	}
	os.WriteFile(e.m.meminfoFile, []byte("MemAvailable: 900000 kB\n"), 0o644)
	os.WriteFile(filepath.Join(e.m.vulnDir, "mds"), []byte("Mitigation: Clear CPU buffers; SMT vulnerable\n"), 0o644)
	if ok, why := e.m.LaunchAllowed(); ok || !strings.Contains(why, "MDS") {
		t.Errorf("MDS with SMT: %v %q", ok, why)
	}
}

func FuzzParseMemAvailable(f *testing.F) {
	for _, s := range []string{"MemAvailable: 12 kB\n", "MemAvailable: -1 kB", "MemAvailable: 1 MB", "MemAvailable:", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := parseMemAvailable(b); err == nil && n < 0 {
			t.Fatalf("negative %d", n)
		}
	})
}
