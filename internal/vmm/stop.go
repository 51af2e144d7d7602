package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// Stop stops a VM: it asks the guest to shut down, then escalates (see
// stop). Stopping a VM that does not exist succeeds.
func (m *Manager) Stop(ctx context.Context, key Key) error {
	return m.StopFor(ctx, key, StopRequested)
}

// StopFor is Stop, telling watchers why: reason.
func (m *Manager) StopFor(ctx context.Context, key Key, reason StopReason) error {
	v := m.lookup(key)
	if v == nil {
		return nil
	}
	return m.stop(ctx, v, reason)
}

// StopAll stops every VM which says to stop (all when it is nil),
// concurrently.
func (m *Manager) StopAll(ctx context.Context, which func(Key) bool) error {
	return m.StopWhere(ctx, which, StopAllRequested)
}

// StopWhere is StopAll, telling watchers why: reason.
func (m *Manager) StopWhere(ctx context.Context, which func(Key) bool, reason StopReason) error {
	m.mu.Lock()
	vs := make([]*vm, 0, len(m.vms))
	for k, v := range m.vms {
		if which == nil || which(k) {
			vs = append(vs, v)
		}
	}
	m.mu.Unlock()
	errs := make([]error, len(vs))
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.stop(ctx, v, reason)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stop runs the escalation ladder upstream concierge uses (see escalate)
// and returns once the process is gone, the ladder failed, or ctx ended.
// The ladder runs on the manager's context, not ctx: a caller that gives
// up must not leave the VM half stopped, and the next caller waits for the
// same ladder instead of starting another.
func (m *Manager) stop(ctx context.Context, v *vm, reason StopReason) error {
	if err := m.adoption(ctx, v); err != nil {
		return err
	}
	if v.launchErr != nil {
		return nil
	}
	v.transition.Lock()
	v.mu.Lock()
	hv := v.hv
	if v.state == StateUnreachable && hv == nil {
		// No process that could be told apart from another: signalling
		// the pid could hit someone else's.
		defer v.transition.Unlock()
		defer v.mu.Unlock()
		return fmt.Errorf("vm %s cannot be stopped: %s: %w", v.key, v.problem, errdefs.ErrUnavailable)
	}
	if v.state == StateStarting || v.state == StateRunning || v.state == StateUnreachable {
		v.state = StateStopping
		v.stopReason = reason
		v.ladderDone = make(chan struct{})
		v.mu.Unlock()
		m.publish(EventStopping, v)
		// Close waits for the ladder; once it has begun to, no new one
		// may start.
		m.mu.Lock()
		closed := m.closed
		if !closed {
			m.wg.Add(1)
		}
		m.mu.Unlock()
		if closed {
			m.endLadder(v, fmt.Errorf("vm %s: cabind is stopping: %w", v.key, errdefs.ErrUnavailable))
		} else {
			go func() {
				defer m.wg.Done()
				m.endLadder(v, m.escalate(v, hv))
			}()
		}
	} else {
		v.mu.Unlock()
	}
	v.transition.Unlock()

	v.mu.Lock()
	// Nil when stopping without a ladder (a failed launch killing its
	// process): then only the process's end is waited for.
	ladder := v.ladderDone
	v.mu.Unlock()
	select {
	case <-v.stopped:
		return nil
	case <-ladder:
		select {
		case <-v.stopped:
			return nil
		default:
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.ladderErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// endLadder records how a stop's ladder ended and wakes its waiters.
func (m *Manager) endLadder(v *vm, err error) {
	v.mu.Lock()
	v.ladderErr = err
	v.mu.Unlock()
	close(v.ladderDone)
}

// escalate asks the guest to shut down (its Shutdown RPC), then the
// hypervisor to quit, then sends SIGTERM and SIGKILL, waiting for the
// process to exit between steps. It returns nil once the process is gone,
// else why it is not.
func (m *Manager) escalate(v *vm, hv hypervisor.VM) error {
	ctx := m.ctx
	log := m.log.With("vm", v.key.String())
	exited := func(d time.Duration) bool {
		select {
		case <-v.stopped:
			return true
		case <-time.After(d):
			return false
		case <-ctx.Done():
			return false
		}
	}
	type step struct {
		name string
		do   func() error
	}
	var steps []step
	v.mu.Lock()
	guest := v.guest
	v.mu.Unlock()
	// A suspended guest cannot shut down: it runs again first.
	awake := m.wakeForStop(v, hv, log)
	select {
	case <-v.ready:
		if !awake {
			break
		}
		steps = append(steps, step{"guest shutdown", func() error {
			sctx, cancel := context.WithTimeout(ctx, m.ladder.shutdownRPC)
			defer cancel()
			return guest.Shutdown(sctx)
		}})
	default:
		// The agent never reported in; there is nobody to ask.
	}
	steps = append(steps,
		step{"hypervisor quit", func() error {
			qctx, cancel := context.WithTimeout(ctx, m.ladder.step)
			defer cancel()
			return hv.Quit(qctx)
		}},
		step{"SIGTERM", func() error { return hv.Signal(syscall.SIGTERM) }},
		step{"SIGKILL", func() error { return hv.Signal(syscall.SIGKILL) }},
	)
	for _, s := range steps {
		// A step can fail because it worked: the guest powering off may
		// cut the Shutdown reply short. So wait after each one regardless.
		if err := s.do(); err != nil {
			log.Debug("stop step", "step", s.name, "err", err)
		}
		if exited(m.ladder.step) {
			log.Info("vm stopped", "by", s.name)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("vm %s: cabind is stopping; the stop was cut short after %s: %w", v.key, s.name, errdefs.ErrUnavailable)
		}
		log.Warn("vm still running, escalating", "after", s.name)
	}
	return fmt.Errorf("vm %s: process %d did not exit: %w", v.key, hv.PID(), errdefs.ErrUnavailable)
}

// exited cleans up after a VM's process ended, whatever the cause.
func (m *Manager) exited(v *vm, log *slog.Logger) {
	v.mu.Lock()
	reason := StopExited
	stopping := v.state == StateStopping
	if stopping {
		reason = v.stopReason
	}
	hv := v.hv
	v.mu.Unlock()
	if !stopping {
		last := qemuLastWords(v.dir)
		log.Warn("vm exited on its own", "qemu_log", last)
		detail := "QEMU exited on its own"
		if p := guestPanic(v.dir); p != "" {
			// panic=-1 and -no-reboot: a guest panic ends QEMU.
			detail = "the guest kernel panicked: " + p
		} else if last != "" {
			detail += "; its log ends: " + last
		}
		m.note(v, detail)
	}
	hv.Close()
	m.publishStopped(v, reason)
}

// publishStopped marks v stopped, releases what it held, forgets it and
// announces it.
func (m *Manager) publishStopped(v *vm, reason StopReason) {
	v.transition.Lock()
	defer v.transition.Unlock()
	v.mu.Lock()
	v.state = StateStopped
	v.stopReason = reason
	cancel, guest, res := v.cancel, v.guest, v.res
	if v.rec != nil {
		v.rec.Alive = false
		v.rec.StoppedAt, v.rec.StopReason, v.rec.StopDetail = time.Now().UTC(), reason, v.stopDetail
		if err := writeRecord(v.dir, v.rec); err != nil {
			m.log.Warn("record", "vm", v.key.String(), "err", err)
		}
	}
	v.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if guest != nil {
		guest.Close()
	}
	// Before the VM is forgotten and announced stopped: a start of the
	// same name that follows finds everything free.
	m.releaseHotplug(v)
	if res != nil {
		if err := res.Release(context.Background()); err != nil {
			m.log.Warn("release the vm's resources", "vm", v.key.String(), "err", err)
		}
	}
	m.mu.Lock()
	if m.vms[v.key] == v {
		delete(m.vms, v.key)
	}
	m.mu.Unlock()
	m.publish(EventStopped, v)
	close(v.stopped)
}
