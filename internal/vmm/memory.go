package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/balloon"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// MemoryGuest is a guest link that can have its guest give up memory it
// can do without (internal/guestlink implements it).
type MemoryGuest interface {
	// DropCaches has the guest write back its dirty pages, drop its page
	// cache and compact its free memory.
	DropCaches(ctx context.Context) error
}

// BalloonInfo is a VM's balloon and its guest's own view of its memory.
type BalloonInfo struct {
	hypervisor.BalloonStats
	// Floor is the size set by hand (SetBalloon), below which neither
	// the timer nor a reclaim takes the balloon.
	Floor int64
	// Aggressive is set while an aggressive balloon inflates.
	Aggressive bool
	// Timer is the balloon timer's interval, 0 when it is off.
	Timer time.Duration
}

// The balloon timer's interval bounds: faster would keep every guest
// busy reporting its memory, and slower is no timer.
const (
	MinBalloonTimer = 100 * time.Millisecond
	MaxBalloonTimer = 24 * time.Hour
)

// aggressiveTick is how often an aggressive balloon takes its next step.
const aggressiveTick = time.Second

// balloonCallTimeout bounds each VM's part of a timer round or an
// aggressive step: a guest that does not answer is skipped, not waited
// for.
const balloonCallTimeout = 10 * time.Second

// reclaimStall is how long a reclaim waits for a balloon that has stopped
// growing before it takes what it got.
const reclaimStall = 3 * time.Second

// vmMemory is a VM's balloon state.
type vmMemory struct {
	// op serializes the moves of the balloon: a reclaim's inflation and
	// the restore after it are not interleaved with the timer's steps,
	// an aggressive balloon's or a size set by hand.
	op sync.Mutex

	mu    sync.Mutex
	floor int64
	// aggressive stops the aggressive balloon, which closes
	// aggressiveDone once it has; nil while there is none.
	aggressive     context.CancelFunc
	aggressiveDone chan struct{}
}

// balloonTimer is the manager's balloon timer (SetBalloonTimer).
type balloonTimer struct {
	mu       sync.Mutex
	interval time.Duration
	stop     context.CancelFunc
	done     chan struct{}
}

// policy is the balloon policy every VM's balloon follows.
func (m *Manager) policy() balloon.Policy { return balloon.Default() }

// balloonVM returns a running VM's balloon. It does not wait: a VM that
// is starting, stopping or suspended is refused at once
// (FailedPrecondition), one being taken back by a restarted cabind after
// a bounded wait.
func (m *Manager) balloonVM(ctx context.Context, key Key) (*vm, hypervisor.Balloon, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, nil, errNoVM(key)
	}
	select {
	case <-v.launched:
	default:
		if !v.adopted {
			return nil, nil, fmt.Errorf("vm %s is starting: its balloon is usable once it runs: %w", key, errdefs.ErrFailedPrecondition)
		}
		if err := m.adoption(ctx, v); err != nil {
			return nil, nil, err
		}
	}
	if v.launchErr != nil {
		return nil, nil, errNoVM(key)
	}
	b, err := v.balloon()
	return v, b, err
}

// balloon is v's balloon, if v runs.
func (v *vm) balloon() (hypervisor.Balloon, error) {
	v.mu.Lock()
	state, hv, suspended, problem := v.state, v.hv, v.suspended, v.problem
	v.mu.Unlock()
	switch state {
	case StateRunning:
	case StateStarting:
		return nil, fmt.Errorf("vm %s is starting: its balloon is usable once it runs: %w", v.key, errdefs.ErrFailedPrecondition)
	case StateStopping, StateStopped:
		return nil, fmt.Errorf("vm %s is stopping: %w", v.key, errdefs.ErrFailedPrecondition)
	case StateUnreachable:
		return nil, fmt.Errorf("vm %s is unreachable: %s: %w", v.key, problem, errdefs.ErrUnavailable)
	default:
		return nil, fmt.Errorf("vm %s is %s: %w", v.key, state, errdefs.ErrUnavailable)
	}
	if suspended {
		return nil, fmt.Errorf("vm %s is suspended: its guest cannot move its balloon until it is resumed: %w", v.key, errdefs.ErrFailedPrecondition)
	}
	b, ok := hv.(hypervisor.Balloon)
	if !ok {
		return nil, fmt.Errorf("vm %s: its hypervisor has no memory balloon: %w", v.key, errdefs.ErrNotImplemented)
	}
	return b, nil
}

// Balloon returns a running VM's balloon and its guest's memory
// statistics, asking the guest for them when its last report is more
// than a second old.
func (m *Manager) Balloon(ctx context.Context, key Key) (BalloonInfo, error) {
	v, b, err := m.balloonVM(ctx, key)
	if err != nil {
		return BalloonInfo{}, err
	}
	st, err := b.BalloonStats(ctx, time.Now().Add(-time.Second))
	if err != nil {
		return BalloonInfo{}, fmt.Errorf("vm %s: %w", key, err)
	}
	info := BalloonInfo{BalloonStats: st, Timer: m.BalloonTimer()}
	v.mem.mu.Lock()
	info.Floor, info.Aggressive = v.mem.floor, v.mem.aggressive != nil
	v.mem.mu.Unlock()
	return info, nil
}

// SetBalloon sets a running VM's balloon to size bytes, and keeps it at
// least that size from then on: the timer's policy and an aggressive
// balloon move it above, never below (0 lets them have all of it). A size
// that would leave the guest less than hypervisor.MinMemoryMiB is
// refused (InvalidArgument naming "balloon_size"). It returns once the
// hypervisor has the target; the guest inflates in its own time.
func (m *Manager) SetBalloon(ctx context.Context, key Key, size int64) error {
	v, b, err := m.balloonVM(ctx, key)
	if err != nil {
		return err
	}
	memory := int64(v.info().MemoryMiB) << 20
	if limit := m.policy().MaxSize(memory); size < 0 || size > limit {
		return errdefs.InvalidArgument("balloon_size", fmt.Sprintf(
			"%d bytes: want 0 to %d, which leaves the guest its %d MiB of %d MiB", size, limit, hypervisor.MinMemoryMiB, memory>>20))
	}
	v.mem.op.Lock()
	defer v.mem.op.Unlock()
	if err := b.SetBalloon(ctx, size); err != nil {
		return fmt.Errorf("vm %s: %w", key, err)
	}
	v.mem.mu.Lock()
	v.mem.floor = size
	v.mem.mu.Unlock()
	m.log.Info("balloon set", "vm", key.String(), "size_mib", size>>20)
	return nil
}

// ReclaimMemory takes back from a running VM what its guest can do
// without: the guest drops its caches and compacts its memory, then the
// balloon inflates by what the guest has available beyond its reserve (at
// most limit bytes; no limit when 0), which makes the host free the
// backing of every page the guest hands over, and, once the guest has
// handed them, deflates to where it was. The guest keeps all of its
// memory to use; the host backs only what the guest touches again.
func (m *Manager) ReclaimMemory(ctx context.Context, key Key, limit int64) error {
	if limit < 0 {
		return errdefs.InvalidArgument("page_limit", fmt.Sprintf("%d: want 0 (no limit) or more", limit))
	}
	v, b, err := m.balloonVM(ctx, key)
	if err != nil {
		return err
	}
	v.mu.Lock()
	guest := v.guest
	v.mu.Unlock()
	g, ok := guest.(MemoryGuest)
	if !ok {
		return fmt.Errorf("vm %s: its guest link cannot drop the guest's caches: %w", key, errdefs.ErrNotImplemented)
	}
	v.mem.op.Lock()
	defer v.mem.op.Unlock()
	start := time.Now()
	m.releaseBootFiles(v, m.log.With("vm", key.String()))
	if err := g.DropCaches(ctx); err != nil {
		return fmt.Errorf("vm %s: drop the guest's caches: %w", key, err)
	}
	st, err := b.BalloonStats(ctx, start)
	if err != nil {
		return fmt.Errorf("vm %s: %w", key, err)
	}
	target, change := m.policy().Reclaim(st, limit)
	log := m.log.With("vm", key.String())
	if !change {
		log.Info("reclaim: caches dropped; nothing beyond the guest's reserve to balloon",
			"available_mib", st.Available>>20)
		return nil
	}
	if err := b.SetBalloon(ctx, target); err != nil {
		return fmt.Errorf("vm %s: %w", key, err)
	}
	size, werr := waitBalloon(ctx, b, target, true)
	// Back to where it was, however the wait ended: a balloon left
	// inflated would hold the guest short of memory it was not asked
	// to give up for good. The answer waits for the guest to have it
	// back.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), balloonCallTimeout)
	defer cancel()
	if err := b.SetBalloon(rctx, st.Size); err != nil {
		return fmt.Errorf("vm %s: deflate after the reclaim: %w", key, err)
	}
	if werr != nil {
		return fmt.Errorf("vm %s: %w", key, werr)
	}
	if _, err := waitBalloon(ctx, b, st.Size, false); err != nil {
		return fmt.Errorf("vm %s: deflate after the reclaim: %w", key, err)
	}
	log.Info("reclaim: balloon inflated and deflated", "reclaimed_mib", (size-st.Size)>>20,
		"asked_mib", (target-st.Size)>>20, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitBalloon waits until the balloon holds at least (grow) or at most
// (!grow) target bytes, or stops moving for reclaimStall, and returns its
// size then.
func waitBalloon(ctx context.Context, b hypervisor.Balloon, target int64, grow bool) (int64, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last, lastMove := int64(-1), time.Now()
	for {
		size, err := b.BalloonSize(ctx)
		if err != nil {
			return last, err
		}
		if (grow && size >= target) || (!grow && size <= target) {
			return size, nil
		}
		if size != last {
			last, lastMove = size, time.Now()
		} else if time.Since(lastMove) > reclaimStall {
			return size, nil
		}
		select {
		case <-ctx.Done():
			return size, ctx.Err()
		case <-t.C:
		}
	}
}

// SetAggressiveBalloon starts or stops a running VM's aggressive balloon:
// while on, every second it inflates towards what the guest uses, leaving
// it only a small reserve (balloon.Policy.Aggressive); a guest that then
// runs out of memory takes pages back from the balloon (deflate-on-oom)
// before it would kill a process. Stopping it gives back all it took
// beyond the size set by hand. Either is a no-op when already so.
func (m *Manager) SetAggressiveBalloon(ctx context.Context, key Key, on bool) error {
	v, b, err := m.balloonVM(ctx, key)
	if err != nil {
		return err
	}
	v.mem.mu.Lock()
	if on {
		defer v.mem.mu.Unlock()
		if v.mem.aggressive != nil {
			return nil
		}
		m.mu.Lock()
		closed := m.closed
		if !closed {
			m.wg.Add(1)
		}
		m.mu.Unlock()
		if closed {
			return fmt.Errorf("vm %s: cabind is stopping: %w", key, errdefs.ErrUnavailable)
		}
		actx, cancel := context.WithCancel(m.ctx)
		done := make(chan struct{})
		v.mem.aggressive, v.mem.aggressiveDone = cancel, done
		go func() {
			defer m.wg.Done()
			defer close(done)
			m.runAggressive(actx, v, b)
		}()
		m.log.Info("aggressive balloon on", "vm", key.String())
		return nil
	}
	cancel, done, floor := v.mem.aggressive, v.mem.aggressiveDone, v.mem.floor
	v.mem.aggressive, v.mem.aggressiveDone = nil, nil
	v.mem.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	m.log.Info("aggressive balloon off", "vm", key.String())
	v.mem.op.Lock()
	defer v.mem.op.Unlock()
	if err := b.SetBalloon(ctx, floor); err != nil {
		return fmt.Errorf("vm %s: deflate the aggressive balloon: %w", key, err)
	}
	return nil
}

// runAggressive steps v's aggressive balloon until ctx ends or v stops.
func (m *Manager) runAggressive(ctx context.Context, v *vm, b hypervisor.Balloon) {
	log := m.log.With("vm", v.key.String())
	t := time.NewTicker(aggressiveTick)
	defer t.Stop()
	for {
		v.mem.mu.Lock()
		floor := v.mem.floor
		v.mem.mu.Unlock()
		v.mem.op.Lock()
		sctx, cancel := context.WithTimeout(ctx, balloonCallTimeout)
		// Not while suspended (nothing would answer) or stopping.
		_, err := v.balloon()
		var st hypervisor.BalloonStats
		if err == nil {
			st, err = b.BalloonStats(sctx, time.Now().Add(-time.Second))
		}
		if err == nil {
			if target, change := m.policy().Aggressive(st, floor); change {
				err = b.SetBalloon(sctx, target)
			}
		}
		cancel()
		v.mem.op.Unlock()
		if err != nil && ctx.Err() == nil {
			log.Debug("aggressive balloon step", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-v.stopped:
			// Nothing to give back to a VM that is gone; forget it.
			v.mem.mu.Lock()
			if v.mem.aggressiveDone != nil {
				v.mem.aggressive, v.mem.aggressiveDone = nil, nil
			}
			v.mem.mu.Unlock()
			return
		case <-t.C:
		}
	}
}

// BalloonTimer is the balloon timer's interval, 0 when it is off.
func (m *Manager) BalloonTimer() time.Duration {
	m.balloons.mu.Lock()
	defer m.balloons.mu.Unlock()
	return m.balloons.interval
}

// SetBalloonTimer runs the balloon policy on every running VM each
// interval (balloon.Policy.Target), or stops it (0), as upstream's
// timer does for every VM at once. An interval outside MinBalloonTimer
// to MaxBalloonTimer is refused (InvalidArgument naming
// "timer_interval").
func (m *Manager) SetBalloonTimer(interval time.Duration) error {
	if interval != 0 && (interval < MinBalloonTimer || interval > MaxBalloonTimer) {
		return errdefs.InvalidArgument("timer_interval", fmt.Sprintf("%v: want 0 (off) or %v to %v", interval, MinBalloonTimer, MaxBalloonTimer))
	}
	t := &m.balloons
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stop != nil {
		t.stop()
		<-t.done
		t.stop, t.done = nil, nil
	}
	t.interval = 0
	if interval == 0 {
		m.log.Info("balloon timer off")
		return nil
	}
	m.mu.Lock()
	closed := m.closed
	if !closed {
		m.wg.Add(1)
	}
	m.mu.Unlock()
	if closed {
		return fmt.Errorf("balloon timer: cabind is stopping: %w", errdefs.ErrUnavailable)
	}
	ctx, cancel := context.WithCancel(m.ctx)
	done := make(chan struct{})
	t.interval, t.stop, t.done = interval, cancel, done
	go func() {
		defer m.wg.Done()
		defer close(done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			m.BalanceBalloons(ctx)
		}
	}()
	m.log.Info("balloon timer on", "interval", interval)
	return nil
}

// BalanceBalloons applies the balloon policy once to every running VM
// that has no aggressive balloon and is not being reclaimed, each with a
// bounded time: what the timer does each interval.
func (m *Manager) BalanceBalloons(ctx context.Context) {
	m.mu.Lock()
	vs := make([]*vm, 0, len(m.vms))
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, v := range vs {
		b, err := v.balloon()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.balance(ctx, v, b); err != nil && ctx.Err() == nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
				m.log.Debug("balloon timer", "vm", v.key.String(), "err", err)
			}
		}()
	}
	wg.Wait()
}

// balance moves v's balloon where the policy wants it.
func (m *Manager) balance(ctx context.Context, v *vm, b hypervisor.Balloon) error {
	if !v.mem.op.TryLock() {
		return nil // a reclaim, a size set by hand or an aggressive step: next time
	}
	defer v.mem.op.Unlock()
	v.mem.mu.Lock()
	floor, aggressive := v.mem.floor, v.mem.aggressive != nil
	v.mem.mu.Unlock()
	if aggressive {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, balloonCallTimeout)
	defer cancel()
	st, err := b.BalloonStats(ctx, time.Now().Add(-time.Second))
	if err != nil {
		return err
	}
	target, change := m.policy().Target(st, floor)
	if !change {
		return nil
	}
	return b.SetBalloon(ctx, target)
}

// releaseBootFiles has a VM's hypervisor let go of its copies of the
// kernel and initramfs the guest booted from, in the background, once
// the guest runs (hypervisor.BootFileReleaser): the guest has them in its
// own memory by then, and they are most of what an idle VM costs the host
// beyond its guest's memory.
func (m *Manager) releaseBootFiles(v *vm, log *slog.Logger) {
	v.mu.Lock()
	hv := v.hv
	var paths []string
	if v.rec != nil {
		paths = []string{v.rec.Kernel, v.rec.Initrd}
	}
	v.mu.Unlock()
	r, ok := hv.(hypervisor.BootFileReleaser)
	if !ok || len(paths) == 0 {
		return
	}
	m.mu.Lock()
	closed := m.closed
	if !closed {
		m.wg.Add(1)
	}
	m.mu.Unlock()
	if closed {
		return
	}
	go func() {
		defer m.wg.Done()
		n, err := r.ReleaseBootFiles(paths...)
		if err != nil {
			log.Debug("release boot files", "err", err)
			return
		}
		log.Debug("boot files released", "mapped_mib", n>>20)
	}()
}
