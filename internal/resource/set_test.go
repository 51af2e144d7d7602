package resource

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cabinvm/cabin/internal/hypervisor"
)

// journal records what the fake kinds are asked to do, in order.
type journal struct {
	mu    sync.Mutex
	steps []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.steps = append(j.steps, s)
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.steps, " ")
}

// fakeKind adds a kernel argument named after itself, and fails where told.
type fakeKind struct {
	name                      string
	j                         *journal
	failPrepare, failAdopt    bool
	failRelease, failStart    bool
	starts, detaches, noState bool
}

func (k *fakeKind) Name() string { return k.name }

func (k *fakeKind) Prepare(_ context.Context, _ VM, cfg *hypervisor.Config) (Hold, error) {
	k.j.add("prepare:" + k.name)
	if k.failPrepare {
		return nil, errors.New("no luck")
	}
	cfg.KernelArgs = append(cfg.KernelArgs, k.name)
	return k.hold(), nil
}

func (k *fakeKind) Adopt(_ context.Context, _ VM, state json.RawMessage) (Hold, error) {
	k.j.add("adopt:" + k.name + "=" + string(state))
	if k.failAdopt {
		return nil, errors.New("gone")
	}
	return k.hold(), nil
}

func (k *fakeKind) hold() Hold {
	h := &fakeHold{k: k}
	switch {
	case k.starts && k.detaches:
		return struct {
			*fakeHold
			startHold
			detachHold
		}{h, startHold{h}, detachHold{h}}
	case k.starts:
		return struct {
			*fakeHold
			startHold
		}{h, startHold{h}}
	case k.detaches:
		return struct {
			*fakeHold
			detachHold
		}{h, detachHold{h}}
	}
	return h
}

type fakeHold struct{ k *fakeKind }

func (h *fakeHold) State() json.RawMessage {
	if h.k.noState {
		return nil
	}
	return json.RawMessage(`"` + h.k.name + `-state"`)
}

func (h *fakeHold) Release(context.Context) error {
	h.k.j.add("release:" + h.k.name)
	if h.k.failRelease {
		return errors.New("stuck")
	}
	return nil
}

type startHold struct{ h *fakeHold }

func (s startHold) Start(context.Context, hypervisor.VM) error {
	s.h.k.j.add("start:" + s.h.k.name)
	if s.h.k.failStart {
		return errors.New("no start")
	}
	return nil
}

type detachHold struct{ h *fakeHold }

func (d detachHold) Detach() { d.h.k.j.add("detach:" + d.h.k.name) }

func testVM() VM {
	return VM{Name: "v", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func kinds(j *journal, names ...string) []*fakeKind {
	var out []*fakeKind
	for _, n := range names {
		out = append(out, &fakeKind{name: n, j: j})
	}
	return out
}

func asKinds(ks []*fakeKind) []Kind {
	var out []Kind
	for _, k := range ks {
		out = append(out, k)
	}
	return out
}

func TestPrepareInOrderReleaseOnceInReverse(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a", "b", "c")
	var cfg hypervisor.Config
	s, err := Prepare(context.Background(), asKinds(ks), testVM(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.KernelArgs, []string{"a", "b", "c"}) {
		t.Errorf("config after prepare %q, want each kind's addition in order", cfg.KernelArgs)
	}
	if got := s.States(); len(got) != 3 || string(got["b"]) != `"b-state"` {
		t.Errorf("States = %v", got)
	}
	for range 3 {
		if err := s.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	s.Detach()
	if got, want := j.String(), "prepare:a prepare:b prepare:c release:c release:b release:a"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
}

// A prepare that fails releases the holds before it, and only those.
func TestFailedPrepareReleasesTheOnesBefore(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a", "b", "c")
	ks[1].failPrepare = true
	_, err := Prepare(context.Background(), asKinds(ks), testVM(), &hypervisor.Config{})
	if err == nil || !strings.HasPrefix(err.Error(), "b: ") {
		t.Fatalf("Prepare = %v, want b's error naming it", err)
	}
	if got, want := j.String(), "prepare:a prepare:b release:a"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
}

// Every hold is released even when one fails, and the failure is told.
func TestReleaseGoesOnPastAFailure(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a", "b", "c")
	ks[1].failRelease = true
	s, err := Prepare(context.Background(), asKinds(ks), testVM(), &hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Release(context.Background()); err == nil || !strings.Contains(err.Error(), "release b: stuck") {
		t.Errorf("Release = %v, want b's failure", err)
	}
	if got, want := j.String(), "prepare:a prepare:b prepare:c release:c release:b release:a"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
}

func TestStartAndDetachReachOnlyTheHoldsThatHaveThem(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a", "b", "c")
	ks[0].starts, ks[0].detaches = true, true
	ks[2].starts = true
	s, err := Prepare(context.Background(), asKinds(ks), testVM(), &hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	s.Detach()
	// Detached, nothing is released: the VM lives on.
	s.Release(context.Background())
	if got, want := j.String(), "prepare:a prepare:b prepare:c start:a start:c detach:a"; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}

	j2 := &journal{}
	ks = kinds(j2, "x", "y")
	ks[0].starts, ks[0].failStart = true, true
	ks[1].starts = true
	s, _ = Prepare(context.Background(), asKinds(ks), testVM(), &hypervisor.Config{})
	if err := s.Start(context.Background(), nil); err == nil || !strings.HasPrefix(err.Error(), "x: ") {
		t.Errorf("Start = %v, want x's failure", err)
	}
	if strings.Contains(j2.String(), "start:y") {
		t.Errorf("started y after x failed: %s", j2)
	}
}

// Adoption hands each kind its recorded state; one that cannot adopt is
// left out and told, and the others are still released later.
func TestAdopt(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a", "b", "c")
	ks[1].failAdopt = true
	ks[2].noState = true
	states := map[string]json.RawMessage{"a": json.RawMessage(`"a-state"`), "b": json.RawMessage(`"b-state"`)}
	s, err := Adopt(context.Background(), asKinds(ks), testVM(), states)
	if err == nil || !strings.Contains(err.Error(), "b: gone") {
		t.Errorf("Adopt = %v, want b's failure", err)
	}
	if got := s.States(); len(got) != 1 || string(got["a"]) != `"a-state"` {
		t.Errorf("States after adoption = %v, want a's alone", got)
	}
	s.Release(context.Background())
	if got, want := j.String(), `adopt:a="a-state" adopt:b="b-state" adopt:c= release:c release:a`; got != want {
		t.Errorf("steps %q, want %q", got, want)
	}
}

type offers interface{ Offer() string }

type offeringHold struct{ *fakeHold }

func (offeringHold) Offer() string { return "an address" }

func TestFind(t *testing.T) {
	j := &journal{}
	ks := kinds(j, "a")
	s, err := Prepare(context.Background(), asKinds(ks), testVM(), &hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := Find[offers](s); ok {
		t.Error("found an offer in a set without one")
	}
	s.holds = append(s.holds, held{kind: "o", hold: offeringHold{&fakeHold{k: ks[0]}}})
	if o, ok := Find[offers](s); !ok || o.Offer() != "an address" {
		t.Errorf("Find = %v, %v; want the offering hold", o, ok)
	}
	if _, ok := Find[offers](nil); ok {
		t.Error("found an offer in a nil set")
	}
}
