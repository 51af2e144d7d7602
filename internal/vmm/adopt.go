package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Adoption timings.
const (
	// defaultAdoptTimeout bounds each exchange with one VM's QEMU while
	// adopting it, and so how long a call about that VM waits for its
	// adoption's first attempt.
	defaultAdoptTimeout = 10 * time.Second
	// defaultAdoptRetry is how long an unreachable VM waits between
	// attempts to take it back.
	defaultAdoptRetry = 10 * time.Second
)

// Adopt takes back the VMs an earlier daemon left running. It reads their
// records and returns at once: each VM is adopted on its own, and only
// calls about a VM still being adopted wait for it (a bounded time). A VM
// whose process died meanwhile is recorded as stopped (VM_EXITED); one
// whose hypervisor cannot be reached is kept, unreachable, and tried again
// until it answers or is stopped.
func (m *Manager) Adopt(ctx context.Context) error {
	dirs, err := vmDirs(m.opts.Root)
	if err != nil {
		return err
	}
	var vs []*vm
	m.mu.Lock()
	for _, dir := range dirs {
		if v := m.recordedVM(dir); v != nil {
			m.vms[v.key] = v
			vs = append(vs, v)
		}
	}
	m.mu.Unlock()
	for _, v := range vs {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.adopt(v)
		}()
	}
	return nil
}

// recordedVM reads dir's record and returns the VM it describes if that
// may still run, adopting; nil otherwise. It keeps CIDs from being reused.
// Called with m.mu held.
func (m *Manager) recordedVM(dir statedir.VMDir) *vm {
	rec, err := readRecord(dir)
	if err != nil {
		m.log.Warn("skipping vm dir", "dir", dir.Path(), "err", err)
		return nil
	}
	if rec.CID >= m.nextCID {
		m.nextCID = rec.CID + 1
	}
	if !rec.Alive {
		return nil
	}
	key := Key{Owner: rec.Owner, Name: rec.Name}
	if dir != m.opts.Root.VM(statedir.VMID(key.Owner, key.Name)) {
		m.log.Warn("record does not match its directory; skipping", "vm", key.String(), "dir", dir.Path())
		return nil
	}
	if m.vms[key] != nil {
		return nil
	}
	v := newVM(key, dir)
	v.rec = rec
	v.adopted = true
	v.state = StateAdopting
	return v
}

// adopt takes v back: it finds its hypervisor's process, takes back what
// it holds, serves it, and connects to the hypervisor, trying again while
// it cannot. v.launched closes after the first attempt.
func (m *Manager) adopt(v *vm) {
	log := m.log.With("vm", v.key.String())
	defer v.launchedOnce.Do(func() { close(v.launched) })
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			v.launchedOnce.Do(func() { close(v.launched) })
			select {
			case <-time.After(m.adoptRetry):
			case <-v.stopped:
				return
			case <-m.ctx.Done():
				return
			}
			if !v.is(StateUnreachable) {
				return
			}
		}
		done, err := m.adoptOnce(v, log)
		if done {
			return
		}
		m.unreachable(v, err, log)
	}
}

// adoptOnce makes one attempt at adopting v. It returns true once there is
// nothing more to try: v is adopted, or found stopped; else why v could
// not be reached.
func (m *Manager) adoptOnce(v *vm, log *slog.Logger) (bool, error) {
	v.mu.Lock()
	hv, rec := v.hv, v.rec
	v.mu.Unlock()
	if hv == nil {
		ctx, cancel := context.WithTimeout(m.ctx, m.adoptTimeout)
		found, err := m.opts.Launcher.Adopt(ctx, v.dir, rec.StartTime)
		cancel()
		// Whether the VM runs or died meanwhile, what it held is taken
		// back: to keep, or to release at once.
		if err == nil || errors.Is(err, hypervisor.ErrNotRunning) {
			res, rerr := resource.Adopt(m.ctx, m.opts.Resources, v.ref(log), rec.Resources)
			if rerr != nil {
				log.Warn("some of what the vm holds could not be taken back", "err", rerr)
			}
			v.mu.Lock()
			v.res = res
			v.mu.Unlock()
		}
		if errors.Is(err, hypervisor.ErrNotRunning) {
			log.Warn("vm exited while no daemon watched it")
			v.launchErr = fmt.Errorf("vm %s exited while no daemon watched it: %w", v.key, errdefs.ErrNotFound)
			m.publishStopped(v, StopExited)
			return true, nil
		}
		if err != nil {
			// The process may be alive but cannot be told from another:
			// leave its record and its files as they are.
			return false, fmt.Errorf("find its hypervisor: %w", err)
		}
		hv = found
		if err := m.serve(m.ctx, v, hv, log); err != nil {
			log.Warn("serve adopted vm", "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.adoptTimeout)
	err := hv.Connect(ctx)
	cancel()
	if err != nil {
		return false, fmt.Errorf("its hypervisor does not answer: %w", err)
	}
	m.adopted(v, hv, log)
	return true, nil
}

// unreachable marks v unreachable for err, unless something else became of
// it meanwhile (a stop).
func (m *Manager) unreachable(v *vm, err error, log *slog.Logger) {
	v.transition.Lock()
	defer v.transition.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != StateAdopting && v.state != StateUnreachable {
		return
	}
	if v.state != StateUnreachable || v.problem != err.Error() {
		log.Error("cannot take the vm back; will try again", "err", err, "every", m.adoptRetry)
	}
	v.state = StateUnreachable
	v.problem = err.Error()
}

// adopted finishes the adoption of v, whose hypervisor answers: it runs
// on, or, if it had not reported in yet, is resumed (a daemon that stopped
// between launching QEMU and resuming it left it paused) and given the
// rest of its start's timeout.
func (m *Manager) adopted(v *vm, hv hypervisor.VM, log *slog.Logger) {
	// Before the state changes: a call that sees it running sees whether
	// it is suspended too.
	m.adoptSuspended(v, hv, log)
	v.transition.Lock()
	v.mu.Lock()
	if v.state != StateAdopting && v.state != StateUnreachable {
		// Stopping meanwhile.
		v.mu.Unlock()
		v.transition.Unlock()
		return
	}
	rec := v.rec
	v.problem = ""
	v.state = StateStarting
	if rec.Ready {
		v.state = StateRunning
	}
	v.mu.Unlock()
	v.transition.Unlock()
	if rec.Ready {
		v.markReady()
	}
	log.Info("vm adopted", "pid", hv.PID(), "cid", rec.CID, "ready", rec.Ready)
	if rec.Ready {
		return
	}
	// Resuming a running VM changes nothing.
	rctx, cancel := context.WithTimeout(m.ctx, m.adoptTimeout)
	err := hv.Resume(rctx)
	cancel()
	if err != nil {
		log.Warn("resume adopted vm", "err", err)
	}
	wait := rec.StartupTimeout
	if wait <= 0 {
		wait = DefaultStartupWait
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.awaitReady(v, wait-time.Since(rec.StartedAt), log)
	}()
}

// adoption waits for v's launch or adoption to end, or for ctx, but for an
// adoption no longer than its first attempt may take.
func (m *Manager) adoption(ctx context.Context, v *vm) error {
	select {
	case <-v.launched:
		return nil
	default:
	}
	var timeout <-chan time.Time
	if v.adopted {
		t := time.NewTimer(m.adoptTimeout + time.Second)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-v.launched:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timeout:
		return fmt.Errorf("vm %s is still being taken back by a restarted cabind; try again: %w", v.key, errdefs.ErrUnavailable)
	}
}
