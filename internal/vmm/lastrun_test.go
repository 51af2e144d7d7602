package vmm

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

func vmNames(infos []Info) []string {
	var out []string
	for _, in := range infos {
		out = append(out, in.Name)
	}
	return out
}

func TestLastRuns(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	for _, n := range []string{"a", "b", "c"} {
		if _, _, err := e.m.Start(context.Background(), spec(n)); err != nil {
			t.Fatal(err)
		}
		events.await(t, EventStarted, n)
	}
	// a is stopped; b exits on its own; c runs on.
	if err := e.m.Stop(context.Background(), Key{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	e.launcher.get(e.root.VM(statedir.VMID("", "b"))).exit()
	events.await(t, EventStopped, "b")

	stopped, err := e.m.Stopped("")
	if err != nil {
		t.Fatal(err)
	}
	if got := vmNames(stopped); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("stopped %q, want [a b] (c runs)", got)
	}
	for _, in := range stopped {
		if in.State != StateStopped || in.StoppedAt.IsZero() || in.CPUs != 1 || in.StartedAt.IsZero() {
			t.Errorf("%s: %+v", in.Name, in)
		}
	}
	if stopped[0].StopReason != StopRequested || stopped[1].StopReason != StopExited || stopped[1].StopDetail == "" {
		t.Errorf("reasons %v/%q and %v/%q", stopped[0].StopReason, stopped[0].StopDetail, stopped[1].StopReason, stopped[1].StopDetail)
	}
	if in, err := e.m.LastRun(Key{Name: "b"}); err != nil || in.Name != "b" {
		t.Errorf("LastRun(b) = %+v, %v", in, err)
	}
	if _, err := e.m.LastRun(Key{Name: "c"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("LastRun of a running VM: %v, want not found", err)
	}
	if other, _ := e.m.Stopped("alice"); len(other) != 0 {
		t.Errorf("another owner sees %q", vmNames(other))
	}

	// Remove: a running VM is refused and keeps its directory.
	if err := e.m.Remove(Key{Name: "c"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Remove(c) while it runs: %v", err)
	}
	if _, err := os.Stat(e.root.VM(statedir.VMID("", "c")).Path()); err != nil {
		t.Errorf("the running VM's directory: %v", err)
	}
	if err := e.m.Remove(Key{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.root.VM(statedir.VMID("", "a")).Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a's directory after Remove: %v", err)
	}
	if err := e.m.Remove(Key{Name: "a"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Remove(a) twice: %v, want not found", err)
	}
	if err := e.m.Remove(Key{Name: "../x"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Remove of a bad name: %v", err)
	}
	removed, err := e.m.Prune("")
	if err != nil || !slices.Equal(removed, []string{"b"}) {
		t.Errorf("Prune = %q, %v; want [b]", removed, err)
	}
	// A start of a removed name starts afresh.
	if _, _, err := e.m.Start(context.Background(), spec("a")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "a")
	if stopped, _ := e.m.Stopped(""); len(stopped) != 0 {
		t.Errorf("stopped after prune and restart: %q", vmNames(stopped))
	}
}

func TestGuestPanicNoted(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("p")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "p")
	dir := e.root.VM(statedir.VMID("", "p"))
	console := "[    1.0] ok\n[    2.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n[    2.5] CPU: 0 PID: 1\n"
	if err := os.WriteFile(dir.ConsoleLog(), []byte(console), 0o600); err != nil {
		t.Fatal(err)
	}
	e.launcher.get(dir).exit()
	ev := events.await(t, EventStopped, "p")
	if want := "the guest kernel panicked: Attempted to kill init! exitcode=0x00000100"; ev.Detail != want {
		t.Errorf("detail %q, want %q", ev.Detail, want)
	}
}
