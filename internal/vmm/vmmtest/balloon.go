package vmmtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

var (
	_ hypervisor.Balloon = (*fakeVM)(nil)
	_ vmm.MemoryGuest    = (*Link)(nil)
)

const mib = 1 << 20

// fakeBalloon is a fake VM's balloon over a model of its guest: the
// guest uses some memory and caches some more, which it drops when the
// balloon needs the room or when asked to (DropCaches). The balloon gets
// to its target at once, but never takes what the guest uses
// (deflate-on-oom).
type fakeBalloon struct {
	mu     sync.Mutex
	memory int64
	init   bool
	used   int64
	cached int64
	target int64
	sets   []int64
	drops  int
	silent bool
}

// model sets the guest's defaults the first time: 100 MiB used and 50
// MiB of cache.
func (b *fakeBalloon) model() {
	if !b.init {
		b.init, b.used, b.cached = true, 100*mib, 50*mib
	}
}

func (b *fakeBalloon) size() int64 {
	b.model()
	return max(min(b.target, b.memory-b.used), 0)
}

func (v *fakeVM) SetBalloon(_ context.Context, size int64) error {
	if v.exited() {
		return fmt.Errorf("set balloon: %w", hypervisor.ErrNotConnected)
	}
	b := &v.balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	if size < 0 || size >= b.memory {
		return errdefs.InvalidArgument("size", fmt.Sprintf("%d bytes of %d", size, b.memory))
	}
	b.target = size
	b.sets = append(b.sets, size)
	return nil
}

func (v *fakeVM) BalloonSize(context.Context) (int64, error) {
	if v.exited() {
		return 0, fmt.Errorf("balloon size: %w", hypervisor.ErrNotConnected)
	}
	v.balloon.mu.Lock()
	defer v.balloon.mu.Unlock()
	return v.balloon.size(), nil
}

func (v *fakeVM) BalloonStats(context.Context, time.Time) (hypervisor.BalloonStats, error) {
	if v.exited() {
		return hypervisor.BalloonStats{}, fmt.Errorf("balloon stats: %w", hypervisor.ErrNotConnected)
	}
	b := &v.balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.silent {
		return hypervisor.BalloonStats{}, fmt.Errorf("the fake guest reports nothing: %w", errdefs.ErrUnavailable)
	}
	size := b.size()
	available := b.memory - b.used - size
	cached := min(b.cached, available)
	return hypervisor.BalloonStats{
		Memory: b.memory, Size: size, Total: b.memory, Free: available - cached, Available: available,
		Caches: cached, Updated: time.Now(),
	}, nil
}

// DropCaches drops the fake guest's cache.
func (l *Link) DropCaches(context.Context) error {
	l.called("DropCaches")
	if l.vm == nil {
		return fmt.Errorf("no fake vm: %w", errdefs.ErrUnavailable)
	}
	b := &l.vm.balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	b.model()
	b.cached = 0
	b.drops++
	return nil
}

// Balloon is a fake VM's balloon as a test sees it.
type Balloon struct {
	Memory, Size, Target int64
	// Targets are the targets set, in order.
	Targets []int64
	// Drops counts the guest's DropCaches.
	Drops int
}

func (e *Env) fakeVM(t testing.TB, key vmm.Key) *fakeVM {
	t.Helper()
	g, err := e.M.Guest(context.Background(), key)
	if err != nil {
		t.Fatalf("vm %s: %v", key, err)
	}
	l, ok := g.(*Link)
	if !ok || l.vm == nil {
		t.Fatalf("vm %s has no fake vm", key)
	}
	return l.vm
}

// Balloon returns the balloon of the running VM key.
func (e *Env) Balloon(t testing.TB, key vmm.Key) Balloon {
	t.Helper()
	b := &e.fakeVM(t, key).balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	return Balloon{Memory: b.memory, Size: b.size(), Target: b.target, Targets: slices.Clone(b.sets), Drops: b.drops}
}

// SetGuestMemory makes the running VM key's guest use used bytes and
// cache cached more.
func (e *Env) SetGuestMemory(t testing.TB, key vmm.Key, used, cached int64) {
	t.Helper()
	b := &e.fakeVM(t, key).balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init, b.used, b.cached = true, used, cached
}

// SetBalloonSilent makes the running VM key's guest report no memory
// statistics (as one without a balloon driver), or report them again.
func (e *Env) SetBalloonSilent(t testing.TB, key vmm.Key, silent bool) {
	t.Helper()
	b := &e.fakeVM(t, key).balloon
	b.mu.Lock()
	defer b.mu.Unlock()
	b.silent = silent
}

// Kill ends the running VM key's "hypervisor" as SIGKILL would.
func (e *Env) Kill(t testing.TB, key vmm.Key) {
	t.Helper()
	e.fakeVM(t, key).exit()
}
