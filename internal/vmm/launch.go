package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// errNoKernel is a launch that neither the caller nor any resource gave a
// kernel to boot.
var errNoKernel = errors.New("no kernel to boot: none asked for, and no resource provides the guest image")

// launch boots the caller's kernel and initrd from boot, the files
// validate opened and checked, never from their paths (which the record
// keeps, for people): a path may lead elsewhere by now. Without them, a
// resource gives cabin's own image, which is in the state directory, which
// only root may change, and goes by path.
func (m *Manager) launch(ctx context.Context, v *vm, spec Spec, boot bootFiles, cid int64) error {
	log := m.log.With("vm", v.key.String())
	args, err := bootcfg.Params{Hostname: bootcfg.Hostname(spec.Name)}.Args()
	if err != nil {
		return err
	}
	accel := spec.Accel
	if accel == "" {
		accel = m.opts.Accel
	}
	cfg := hypervisor.Config{
		Name: spec.Name, Dir: v.dir, Machine: machineFor(spec), Accel: accel,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Kernel: spec.Kernel, Initrd: spec.Initrd, KernelFile: boot.kernel, InitrdFile: boot.initrd,
		KernelArgs: append(args, spec.KernelParams...),
	}
	// The start's disks and shares, opened and checked on its caller's
	// behalf; the hypervisor gets the open files, and holds its own
	// once launched.
	opened, err := spec.openDisks(m.opts.Root)
	if err != nil {
		return err
	}
	defer opened.Close()
	cfg.Disks, cfg.Shares = opened.disks, opened.shares
	if err := os.MkdirAll(v.dir.Path(), 0o700); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	// Before anything in the directory is written or removed: a QEMU of
	// an earlier run may still live there (stopped, or from a record this
	// daemon could not read), and its files are its own.
	claim, err := m.opts.Launcher.Claim(v.dir)
	if err != nil {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "vm %s: %w", v.key, err)
	}
	defer claim.Release()
	ref := v.ref(log)
	ref.Network = spec.Network
	ref.Type = int32(spec.Type)
	res, err := resource.Prepare(ctx, m.opts.Resources, ref, &cfg)
	if err != nil {
		return err
	}
	if cfg.Kernel == "" && cfg.KernelFile == nil {
		releaseUnlaunched(res, log)
		return fmt.Errorf("vm %s: %w", v.key, errNoKernel)
	}
	// The runtime files of an earlier run are the launcher's to clear,
	// under the claim.
	rec := &record{
		Owner: spec.Owner, Name: spec.Name, CID: cid,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Accel: string(accel), Machine: string(cfg.Machine),
		Kernel: cfg.Kernel, Initrd: cfg.Initrd, KernelArgs: cfg.KernelArgs, VMType: spec.Type,
		Shares:          withGuestDirs(recordShares(cfg.Shares), spec.Shares),
		Resources:       res.States(),
		Network:         spec.Network,
		Disks:           recordDisks(cfg.Disks, spec.Disks, res),
		StartTermina:    spec.StartTermina || spec.Type == VMTypeTermina,
		TerminaFeatures: spec.TerminaFeatures,
		StartedAt:       time.Now().UTC(), StartupTimeout: spec.Timeout,
	}
	v.mu.Lock()
	v.rec = rec
	v.res = res
	v.mu.Unlock()
	if err := writeRecord(v.dir, rec); err != nil {
		releaseUnlaunched(res, log)
		return err
	}
	m.publish(EventStartingUp, v)

	hv, err := m.opts.Launcher.Launch(ctx, claim, cfg)
	if err != nil {
		m.publishStopped(v, StopExited)
		return fmt.Errorf("launch: %w", err)
	}
	v.mu.Lock()
	rec.PID, rec.StartTime, rec.Alive = hv.PID(), hv.StartTime(), true
	v.mu.Unlock()
	if err := writeRecord(v.dir, rec); err != nil {
		hv.Signal(syscall.SIGKILL)
		<-hv.Done()
		hv.Close()
		m.publishStopped(v, StopExited)
		return err
	}
	// Attach the console before the vCPUs run so no output is lost; the
	// guest link connects whenever the guest gets there.
	if err := m.serve(ctx, v, hv, log); err != nil {
		m.kill(v, hv)
		return err
	}
	if m.ctx.Err() != nil {
		// cabind is stopping. The VM stays, paused, with a record saying
		// it lives: the next cabind adopts it and lets it run. Close
		// detaches from it.
		return fmt.Errorf("vm %s: cabind stopped while it was launching; it will be adopted when cabind runs again: %w", v.key, errdefs.ErrUnavailable)
	}
	if err := hv.Resume(ctx); err != nil {
		m.kill(v, hv)
		return fmt.Errorf("resume: %w", err)
	}
	log.Info("vm launched", "pid", hv.PID(), "cid", cid, "accel", accel, "cpus", spec.CPUs, "memory_mib", spec.MemoryMiB)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.awaitReady(v, spec.Timeout, log)
	}()
	return nil
}

// serve takes charge of a VM whose hypervisor runs, launched or adopted:
// it starts what its resources do once it runs (attaching to its console),
// links to its agent, and watches for its exit. It does all three even
// when the first fails, which it then returns: the VM is watched either
// way.
func (m *Manager) serve(ctx context.Context, v *vm, hv hypervisor.VM, log *slog.Logger) error {
	v.mu.Lock()
	v.hv = hv
	res := v.res
	v.mu.Unlock()
	err := res.Start(ctx, hv)
	guest := m.opts.Guests.Dial(v.ref(log))
	wctx, cancel := context.WithCancel(m.ctx)
	v.mu.Lock()
	v.guest = guest
	v.cancel = cancel
	v.mu.Unlock()
	// Watched last: a process gone by now is seen at once, and its end
	// then finds everything above in place to close.
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-hv.Done():
			m.exited(v, log)
		case <-wctx.Done():
		}
	}()
	return err
}

// kill ends a VM whose start failed after its process was launched.
func (m *Manager) kill(v *vm, hv hypervisor.VM) {
	v.mu.Lock()
	v.stopReason = StopExited
	v.state = StateStopping
	v.mu.Unlock()
	hv.Signal(syscall.SIGKILL)
	select {
	case <-v.stopped:
	case <-m.ctx.Done():
		// Nobody watches the process any more; the next cabind finds
		// it gone.
	}
}

// awaitReady waits for the guest agent, then brings the VM up.
func (m *Manager) awaitReady(v *vm, timeout time.Duration, log *slog.Logger) {
	select {
	case <-v.ready:
	case <-v.stopped:
		return
	case <-m.ctx.Done():
		return
	case <-time.After(timeout):
		log.Error("guest agent did not report in time; stopping the vm", "timeout", timeout)
		m.note(v, fmt.Sprintf("the guest agent did not report within the start timeout (%s); stopping the VM", timeout))
		m.stop(context.Background(), v, StopExited)
		return
	}
	up := time.Now()
	m.bringUp(v, log)
	bringUp := time.Since(up)
	v.transition.Lock()
	defer v.transition.Unlock()
	v.mu.Lock()
	if v.state != StateStarting {
		v.mu.Unlock()
		return
	}
	v.state = StateRunning
	v.rec.Ready = true
	err := writeRecord(v.dir, v.rec)
	v.mu.Unlock()
	if err != nil {
		log.Warn("record", "err", err)
	}
	log.Info("vm ready", "after", time.Since(v.info().StartedAt).Round(time.Millisecond), "bring_up", bringUp.Round(100*time.Microsecond))
	m.publish(EventStarted, v)
	m.releaseBootFiles(v, log)
}

// bringUp configures a guest that just reported in. Failures are logged:
// the guest is usable without them.
func (m *Manager) bringUp(v *vm, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	v.mu.Lock()
	guest := v.guest
	v.mu.Unlock()
	// The guest's clock starts from the RTC, if any; give it ours.
	if err := guest.SetTime(ctx, time.Now()); err != nil {
		log.Warn("bring-up: set time", "err", err)
	}
	// Then, in upstream's order: the network, the time zone.
	v.mu.Lock()
	res := v.res
	v.mu.Unlock()
	if n, ok := resource.Find[Networked](res); ok {
		gn := n.GuestNetwork()
		if len(gn.DNS.Nameservers) == 0 {
			gn.DNS = m.DNS()
		}
		if err := guest.ConfigureNetwork(ctx, gn); err != nil {
			log.Warn("bring-up: configure the network", "address", gn.Address, "err", err)
		}
	}
	if tz := m.opts.Timezone; tz != "" {
		if err := guest.SetTimezone(ctx, tz); err != nil {
			log.Warn("bring-up: set timezone", "timezone", tz, "err", err)
		}
	}
	// Then the disks, the shares and StartTermina, on their own bounds.
	m.bringUpStorage(v, guest, log)
}

// release frees what a VM holds whose hypervisor never started.
func releaseUnlaunched(res *resource.Set, log *slog.Logger) {
	if err := res.Release(context.Background()); err != nil {
		log.Warn("release the vm's resources", "err", err)
	}
}
