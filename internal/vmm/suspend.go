package vmm

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// GuestSuspender is a guest link that can tell its guest a suspend is
// coming (Maitred.PrepareToSuspend: the guest syncs its filesystems).
// The manager finds it by type assertion; a link without it suspends
// its VM without warning the guest.
type GuestSuspender interface {
	PrepareToSuspend(ctx context.Context) error
}

// Suspend and resume timings: upstream gives PrepareToSuspend its
// default RPC timeout (kDefaultTimeoutSeconds, 10 s); the hypervisor's
// stop and cont answer at once unless its monitor is wedged.
const (
	guestCallTimeout = 10 * time.Second
	powerTimeout     = 10 * time.Second
)

// running finds the VM key for a call that acts on a running VM, without
// waiting for one that is being launched (whose image may take minutes
// to build) and no longer than an adoption's first attempt for one being
// taken back. A VM starting, stopping or unreachable is refused, saying
// so (vmError).
func (m *Manager) running(ctx context.Context, key Key) (*vm, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, errNoVM(key)
	}
	select {
	case <-v.launched:
	default:
		if !v.adopted {
			return nil, errStarting(key)
		}
		if err := m.adoption(ctx, v); err != nil {
			return nil, err
		}
	}
	if v.launchErr != nil {
		return nil, errNoVM(key)
	}
	return v, v.runningErr()
}

func errStarting(key Key) error {
	return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is starting: its guest has not come up yet; try again once it runs", key)
}

// runningErr says why v cannot take a call that needs it running; nil
// when it can.
func (v *vm) runningErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch v.state {
	case StateRunning:
		return nil
	case StateStarting:
		return errStarting(v.key)
	case StateStopping, StateStopped:
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is stopping", v.key)
	case StateUnreachable:
		return errdefs.Errorf(errdefs.ErrUnavailable, "vm %s is unreachable: %s", v.key, v.problem)
	}
	return errdefs.Errorf(errdefs.ErrUnavailable, "vm %s is still being taken back by a restarted cabind; try again", v.key)
}

// awake finds a running VM that is not suspended, and its guest link,
// for a call into its guest: a suspended guest cannot answer.
func (m *Manager) awake(ctx context.Context, key Key) (*vm, GuestLink, error) {
	v, err := m.running(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.suspended {
		return nil, nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s is suspended: resume it first", key)
	}
	return v, v.guest, nil
}

// Suspend suspends a running VM as upstream concierge does: it tells the
// guest (PrepareToSuspend, whose failure is logged, not fatal, as
// upstream's), then stops its vCPUs. The VM keeps its memory and devices
// and stays StateRunning, with Info.Suspended set, until Resume or a
// stop. Suspending a suspended VM succeeds and does nothing (its guest
// could not answer). A VM starting or stopping is refused.
func (m *Manager) Suspend(ctx context.Context, key Key) error {
	v, err := m.running(ctx, key)
	if err != nil {
		return err
	}
	v.power.Lock()
	defer v.power.Unlock()
	// Again under power: a stop may have begun meanwhile.
	if err := v.runningErr(); err != nil {
		return err
	}
	v.mu.Lock()
	suspended, hv, guest := v.suspended, v.hv, v.guest
	v.mu.Unlock()
	if suspended {
		return nil
	}
	log := m.log.With("vm", key.String())
	if s, ok := guest.(GuestSuspender); ok {
		gctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
		err := s.PrepareToSuspend(gctx)
		cancel()
		if err != nil {
			log.Warn("the guest did not prepare to suspend; suspending it all the same", "err", err)
		}
	}
	// On the manager's context: a caller that gives up must not leave
	// the VM paused without its state saying so.
	pctx, cancel := context.WithTimeout(m.ctx, powerTimeout)
	err = hv.Pause(pctx)
	cancel()
	if err != nil {
		return errdefs.Errorf(errdefs.ErrUnavailable, "suspend vm %s: %w", key, err)
	}
	m.setSuspended(v, true, log)
	log.Info("vm suspended")
	return nil
}

// Resume runs a suspended VM's vCPUs again, then sets its guest's clock
// from the host's and gives it the current DNS settings, as upstream
// does after every resume: the guest's clock stood still meanwhile.
// Resuming a VM that is not suspended only does the latter.
func (m *Manager) Resume(ctx context.Context, key Key) error {
	v, err := m.running(ctx, key)
	if err != nil {
		return err
	}
	v.power.Lock()
	defer v.power.Unlock()
	if err := v.runningErr(); err != nil {
		return err
	}
	v.mu.Lock()
	suspended, hv, guest, res := v.suspended, v.hv, v.guest, v.res
	v.mu.Unlock()
	log := m.log.With("vm", key.String())
	if suspended {
		if err := m.wake(v, hv, log); err != nil {
			return fmt.Errorf("resume vm %s: %w", key, err)
		}
		log.Info("vm resumed")
		v.mu.Lock()
		guest = v.guest
		v.mu.Unlock()
	}
	gctx, cancel := context.WithTimeout(ctx, guestCallTimeout)
	defer cancel()
	if err := guest.SetTime(gctx, time.Now()); err != nil {
		log.Warn("resume: set the guest's clock", "err", err)
	}
	if n, ok := resource.Find[Networked](res); ok && len(n.GuestNetwork().DNS.Nameservers) == 0 {
		if err := guest.SetDNS(gctx, m.DNS()); err != nil {
			log.Warn("resume: give the guest the DNS settings", "err", err)
		}
	}
	return nil
}

// setSuspended records whether v is suspended, in memory and in its
// record (a restarted cabind asks the hypervisor all the same).
func (m *Manager) setSuspended(v *vm, suspended bool, log *slog.Logger) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.suspended = suspended
	if v.rec != nil && v.rec.Suspended != suspended {
		v.rec.Suspended = suspended
		if err := writeRecord(v.dir, v.rec); err != nil {
			log.Warn("record", "err", err)
		}
	}
}

// wakeForStop resumes a suspended VM that is being stopped, so that its
// guest can shut down cleanly (unmount, flush its disks) rather than be
// cut off by the quit that follows: a paused guest cannot answer
// Shutdown, and would only make the ladder wait out the RPC's timeout.
// It returns false when the VM stays suspended (its hypervisor does not
// answer): the ladder then skips the guest's step.
func (m *Manager) wakeForStop(v *vm, hv hypervisor.VM, log *slog.Logger) bool {
	v.power.Lock()
	defer v.power.Unlock()
	v.mu.Lock()
	suspended := v.suspended
	v.mu.Unlock()
	if !suspended {
		return true
	}
	if err := m.wake(v, hv, log); err != nil {
		log.Warn("cannot resume the suspended vm for its guest to shut down; quitting it instead", "err", err)
		return false
	}
	return true
}

// wake runs a suspended VM's vCPUs again and, for one adopted
// suspended, makes its guest link again (relink). Called with v.power
// held.
func (m *Manager) wake(v *vm, hv hypervisor.VM, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(m.ctx, powerTimeout)
	err := hv.Resume(ctx)
	cancel()
	if err != nil {
		return errdefs.Errorf(errdefs.ErrUnavailable, "%w", err)
	}
	m.setSuspended(v, false, log)
	v.mu.Lock()
	stale := v.staleLink
	v.staleLink = false
	v.mu.Unlock()
	if stale {
		if err := m.relink(v, log); err != nil {
			return err
		}
	}
	return nil
}

// relink's timings: it lets the guest see its host go for a gap before
// it connects again, first relinkGap, then five times the last, in up to
// relinkAttempts attempts; each time it waits relinkWait for the agent to
// report in.
const (
	relinkAttempts = 3
	relinkGap      = 100 * time.Millisecond
	relinkWait     = 5 * time.Second
)

// relink makes a new guest link for a VM adopted suspended, now that it
// runs again. The agent learns that its host went only by reading EOF
// from its port while no host holds it: a cabind that stopped and one
// that connected while the guest was paused are no change at all to it,
// and the new session's bytes would land in the old one's. So the link
// made at adoption is closed, the guest is given time to read its EOF,
// and a new one is made; the agent reports in on each new session
// (GuestReady), and a unary call (SetTime) answered says its other port
// works too. It tries again with a longer gap while either fails, a
// bounded number of times.
func (m *Manager) relink(v *vm, log *slog.Logger) error {
	for i, gap := 0, relinkGap; i < relinkAttempts; i, gap = i+1, gap*5 {
		v.mu.Lock()
		old := v.guest
		v.mu.Unlock()
		if old != nil {
			old.Close()
		}
		select {
		case <-v.reported:
		default:
		}
		select {
		case <-time.After(gap):
		case <-m.ctx.Done():
			return fmt.Errorf("cabind is stopping: %w", errdefs.ErrUnavailable)
		}
		link := m.opts.Guests.Dial(v.ref(log))
		v.mu.Lock()
		v.guest = link
		v.mu.Unlock()
		select {
		case <-v.reported:
			// The report came on the session's port; the agent's
			// other port, which carries unary calls, must answer too.
			pctx, cancel := context.WithTimeout(m.ctx, relinkWait)
			err := link.SetTime(pctx, time.Now())
			cancel()
			if err == nil {
				log.Info("guest link made again after resume", "gap", gap)
				return nil
			}
			log.Warn("the agent reported in on the new link but does not answer calls; trying again", "gap", gap, "err", err)
		case <-time.After(relinkWait):
			log.Warn("the agent did not report in on the new link; trying again", "gap", gap)
		case <-v.stopped:
			return fmt.Errorf("vm %s stopped: %w", v.key, errdefs.ErrNotFound)
		case <-m.ctx.Done():
			return fmt.Errorf("cabind is stopping: %w", errdefs.ErrUnavailable)
		}
	}
	// The VM runs; only its guest does not answer yet.
	log.Warn("the agent has not reported in since the vm was resumed")
	return nil
}

// adoptSuspended learns whether an adopted VM that was running is
// suspended, from its hypervisor (query-status), which is the truth
// whatever the record says; from the record when the hypervisor cannot
// say.
func (m *Manager) adoptSuspended(v *vm, hv hypervisor.VM, log *slog.Logger) {
	v.mu.Lock()
	rec := v.rec
	v.mu.Unlock()
	if rec == nil || !rec.Ready {
		// Not brought up yet: the adoption resumes it.
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.adoptTimeout)
	paused, err := hv.Paused(ctx)
	cancel()
	if err != nil {
		log.Warn("cannot tell whether the adopted vm is suspended; going by its record", "suspended", rec.Suspended, "err", err)
		paused = rec.Suspended
	}
	if paused {
		log.Info("adopted vm is suspended")
	}
	m.setSuspended(v, paused, log)
	v.mu.Lock()
	v.staleLink = paused
	v.mu.Unlock()
}
