package vmm

import (
	"context"
	"errors"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// defaultAdoptTimeout bounds each exchange with one VM's QEMU while
// adopting it.
const defaultAdoptTimeout = 10 * time.Second

// Adopt re-attaches to the VMs an earlier daemon left running. A VM whose
// process died meanwhile is recorded as stopped (VM_EXITED).
func (m *Manager) Adopt(ctx context.Context) error {
	dirs, err := vmDirs(m.opts.Root)
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		m.adopt(ctx, dir)
	}
	return nil
}

func (m *Manager) adopt(ctx context.Context, dir statedir.VMDir) {
	rec, err := readRecord(dir)
	if err != nil {
		m.log.Warn("skipping vm dir", "dir", dir.Path(), "err", err)
		return
	}
	if rec.CID >= m.nextCID {
		m.nextCID = rec.CID + 1
	}
	if !rec.Alive {
		return
	}
	key := Key{Owner: rec.Owner, Name: rec.Name}
	log := m.log.With("vm", key.String())
	if dir != m.opts.Root.VM(statedir.VMID(key.Owner, key.Name)) {
		log.Warn("record does not match its directory; skipping", "dir", dir.Path())
		return
	}
	v := newVM(key, dir)
	v.rec = rec
	v.adopted = true
	close(v.launched)
	// One VM whose monitor does not answer (held by another client, or
	// QEMU wedged) must not keep the daemon from the others.
	actx, cancel := context.WithTimeout(ctx, m.adoptTimeout)
	hv, err := m.opts.Launcher.Adopt(actx, dir, rec.StartTime)
	cancel()
	if err != nil && !errors.Is(err, hypervisor.ErrNotRunning) {
		// The process may be alive but out of reach; leave its record
		// and what it holds as they are for a later daemon.
		log.Error("cannot adopt vm", "err", err)
		return
	}
	// Whether the VM runs or died meanwhile, what it held is taken back:
	// to keep, or to release now.
	res, rerr := resource.Adopt(ctx, m.opts.Resources, v.ref(log), rec.Resources)
	if rerr != nil {
		log.Warn("some of what the vm holds could not be taken back", "err", rerr)
	}
	v.res = res
	if err != nil {
		log.Warn("vm exited while no daemon watched it")
		m.publishStopped(v, StopExited)
		return
	}
	if rec.Ready {
		v.state = StateRunning
		v.markReady()
	}
	m.mu.Lock()
	m.vms[key] = v
	m.mu.Unlock()
	if err := m.serve(ctx, v, hv, log); err != nil {
		log.Warn("serve adopted vm", "err", err)
	}
	log.Info("vm adopted", "pid", hv.PID(), "cid", rec.CID, "ready", rec.Ready)
	if !rec.Ready {
		// A daemon that stopped between launching QEMU and resuming it
		// left the VM paused; resuming a running VM changes nothing.
		rctx, cancel := context.WithTimeout(ctx, m.adoptTimeout)
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
}
