// Package vmm is cabind's VM manager: it starts VMs through a hypervisor
// Launcher, keeps each VM's state machine (starting → running → stopping →
// stopped), its on-disk record, console log and channel to the guest agent,
// publishes state changes as events, and re-adopts running VMs when a new
// daemon starts. It knows nothing of the gRPC APIs it is served through.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Image is a bootable kernel and initramfs, and the directory of the
// container root filesystems that goes with them.
type Image struct {
	Kernel string
	Initrd string
	// Rootfs is shared read-only with every VM, under bootcfg.RootfsTag;
	// none when empty.
	Rootfs string
}

// Images provides cabin's default guest image, building it if needed.
type Images interface {
	Ensure(ctx context.Context, progress func(step string)) (Image, error)
	// Rootfs returns the container root filesystems' directory for a VM
	// that boots a kernel of its own, without the rest of the image
	// where it can.
	Rootfs(ctx context.Context, progress func(step string)) (string, error)
}

// Options configure a Manager.
type Options struct {
	Root     statedir.Root
	Launcher hypervisor.Launcher
	Images   Images
	// Guests serves the host's services on each VM's channel.
	Guests GuestServer
	// Accel is the accelerator for VMs that do not ask for one.
	Accel hypervisor.Accel
	// Host limits what a VM may ask for.
	Host Host
	// DefaultMemoryMiB is the RAM of VMs that do not ask for an amount.
	DefaultMemoryMiB int
	// Timezone is the zone guests are set to at bring-up (a name under
	// /usr/share/zoneinfo, such as "Europe/Paris"); none when empty.
	Timezone string
	Log      *slog.Logger
}

// Stop ladder timings; see Stop.
type ladder struct {
	shutdownRPC time.Duration
	step        time.Duration
}

var defaultLadder = ladder{shutdownRPC: 30 * time.Second, step: 10 * time.Second}

// Manager owns the VMs of one state directory.
type Manager struct {
	opts   Options
	log    *slog.Logger
	bus    Bus
	ladder ladder
	// adoptTimeout bounds each exchange with one VM's QEMU while adopting.
	adoptTimeout time.Duration
	// ctx outlives every RPC: it bounds the goroutines serving VMs.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	vms     map[Key]*vm
	nextCID int64
	closed  bool
}

// firstCID is the first vsock context id handed out; 0-2 are reserved and
// upstream starts at 32.
const firstCID = 32

// New returns a Manager. Call Adopt next to take over the VMs an earlier
// daemon left running.
func New(opts Options) (*Manager, error) {
	if err := os.MkdirAll(opts.Root.VMsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		opts:         opts,
		log:          opts.Log,
		ladder:       defaultLadder,
		adoptTimeout: defaultAdoptTimeout,
		ctx:          ctx,
		cancel:       cancel,
		vms:          map[Key]*vm{},
		nextCID:      firstCID,
	}
	return m, nil
}

// Subscribe streams events; see Bus.Subscribe.
func (m *Manager) Subscribe() (<-chan Event, func()) { return m.bus.Subscribe() }

func (m *Manager) publish(kind EventKind, v *vm) {
	e := Event{Kind: kind, Time: time.Now(), Info: v.info()}
	if kind == EventStopped {
		v.mu.Lock()
		e.Reason = v.stopReason
		v.mu.Unlock()
	}
	m.bus.publish(e)
}

// Start starts the VM spec describes and returns once its hypervisor runs;
// the guest is usable at the EventStarted that follows. Starting a VM that
// already exists returns its info with started false: concurrent starts of
// one key start one VM.
func (m *Manager) Start(ctx context.Context, spec Spec) (info Info, started bool, err error) {
	if err := spec.validate(m.opts.Host, m.opts.DefaultMemoryMiB); err != nil {
		return Info{}, false, err
	}
	boot, err := spec.openFiles()
	if err != nil {
		return Info{}, false, err
	}
	// Once launched, QEMU holds its own descriptors for these.
	defer boot.Close()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Info{}, false, fmt.Errorf("vmm: manager closed: %w", errdefs.ErrUnavailable)
	}
	if v := m.vms[spec.Key]; v != nil {
		m.mu.Unlock()
		return m.existing(ctx, v)
	}
	v := newVM(spec.Key, m.opts.Root.VM(statedir.VMID(spec.Owner, spec.Name)))
	m.vms[spec.Key] = v
	cid := m.nextCID
	m.nextCID++
	// Counted while it runs, so Close waits for it: a launch adds the
	// goroutines that serve the VM.
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()

	// Close cuts a launch short (an image build can take minutes).
	lctx, cancel := context.WithCancel(ctx)
	defer context.AfterFunc(m.ctx, cancel)()
	err = m.launch(lctx, v, spec, boot, cid)
	cancel()
	if err != nil && m.ctx.Err() != nil && !errors.Is(err, errdefs.ErrUnavailable) {
		err = fmt.Errorf("vm %s: cabind stopped during the start: %w (%w)", v.key, errdefs.ErrUnavailable, err)
	}
	if err != nil {
		m.mu.Lock()
		// A failure after the process started has already removed v, and
		// a new start of the key may have taken its place since.
		if m.vms[spec.Key] == v {
			delete(m.vms, spec.Key)
		}
		m.mu.Unlock()
		v.launchErr = err
		close(v.launched)
		return Info{}, false, err
	}
	close(v.launched)
	return v.info(), true, nil
}

// existing answers a start of a VM that is already there.
func (m *Manager) existing(ctx context.Context, v *vm) (Info, bool, error) {
	select {
	case <-v.launched:
	case <-ctx.Done():
		return Info{}, false, ctx.Err()
	}
	if v.launchErr != nil {
		return Info{}, false, v.launchErr
	}
	info := v.info()
	if info.State == StateStopping || info.State == StateStopped {
		return Info{}, false, fmt.Errorf("vm %s is stopping: %w", v.key, errdefs.ErrFailedPrecondition)
	}
	return info, false, nil
}

// launch boots the caller's kernel and initrd from boot, the files
// validate opened and checked, never from their paths (which the record
// keeps, for people): a path may lead elsewhere by now. cabin's own image
// is in the state directory, which only root may change, and goes by path.
func (m *Manager) launch(ctx context.Context, v *vm, spec Spec, boot bootFiles, cid int64) error {
	log := m.log.With("vm", v.key.String())
	progress := func(step string) { log.Info("image", "step", step) }
	kernel, initrd, rootfs := spec.Kernel, spec.Initrd, ""
	if kernel == "" {
		img, err := m.opts.Images.Ensure(ctx, progress)
		if err != nil {
			return fmt.Errorf("guest image: %w", err)
		}
		kernel, initrd, rootfs = img.Kernel, img.Initrd, img.Rootfs
	} else {
		// A guest of the caller's may run cabin-agent and containers
		// too. It boots without cabin's image, so it starts without the
		// share rather than fail for it.
		dir, err := m.opts.Images.Rootfs(ctx, progress)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("container root filesystems: %w", err)
			}
			log.Warn("starting without the container root filesystems share", "err", err)
		}
		rootfs = dir
	}
	var shares []hypervisor.Share
	if rootfs != "" {
		shares = append(shares, hypervisor.Share{Tag: bootcfg.RootfsTag, Path: rootfs, ReadOnly: true})
	}
	args, err := bootcfg.Params{Hostname: bootcfg.Hostname(spec.Name)}.Args()
	if err != nil {
		return err
	}
	args = append(args, spec.KernelParams...)
	accel := spec.Accel
	if accel == "" {
		accel = m.opts.Accel
	}
	if err := os.MkdirAll(v.dir.Path(), 0o700); err != nil {
		return fmt.Errorf("vm dir: %w", err)
	}
	// The runtime files of an earlier run are the launcher's to clear: it
	// first checks that no QEMU of that run still lives in the directory.
	rec := &record{
		Owner: spec.Owner, Name: spec.Name, CID: cid,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Accel: string(accel), Machine: string(hypervisor.MachineMicroVM),
		Kernel: kernel, Initrd: initrd, KernelArgs: args, VMType: spec.VMType,
		Shares:    recordShares(shares),
		StartedAt: time.Now().UTC(), StartupTimeout: spec.Timeout,
	}
	v.mu.Lock()
	v.rec = rec
	v.mu.Unlock()
	if err := writeRecord(v.dir, rec); err != nil {
		return err
	}
	m.publish(EventStartingUp, v)

	hv, err := m.opts.Launcher.Launch(ctx, hypervisor.Config{
		Name: spec.Name, Dir: v.dir, Machine: hypervisor.MachineMicroVM, Accel: accel,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Kernel: kernel, Initrd: initrd, KernelFile: boot.kernel, InitrdFile: boot.initrd,
		KernelArgs: args, Shares: shares,
	})
	if err != nil {
		m.publishStopped(v, StopExited)
		return fmt.Errorf("launch: %w", err)
	}
	v.mu.Lock()
	v.hv = hv
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
	// channel attaches whenever the guest gets there.
	consoleReady := m.serve(v, log)
	<-consoleReady
	if m.ctx.Err() != nil {
		// cabind is stopping. The VM stays, paused, with a record saying
		// it lives: the next cabind adopts it and lets it run.
		hv.Close()
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

// serve starts the goroutines that live as long as the VM: console copy,
// agent channel and exit watch. The returned channel is closed once the
// console is attached (or could not be).
func (m *Manager) serve(v *vm, log *slog.Logger) <-chan struct{} {
	ctx, cancel := context.WithCancel(m.ctx)
	v.mu.Lock()
	v.cancel = cancel
	hv := v.hv
	v.mu.Unlock()
	v.agent = newAgentLink(v.key, v.dir, m.opts.Guests, log)
	consoleReady := make(chan struct{})
	m.wg.Add(3)
	go func() { defer m.wg.Done(); copyConsole(ctx, v.dir, consoleReady, log) }()
	go func() { defer m.wg.Done(); v.agent.run(ctx) }()
	go func() {
		defer m.wg.Done()
		select {
		case <-hv.Done():
			m.exited(v, log)
		case <-ctx.Done():
		}
	}()
	return consoleReady
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
}

// bringUp configures a guest that just reported in. Failures are logged:
// the guest is usable without them.
func (m *Manager) bringUp(v *vm, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	cc, err := v.agent.conn(ctx)
	if err != nil {
		log.Warn("bring-up", "err", err)
		return
	}
	maitred := vmtools.NewMaitredClient(cc)
	// The guest's clock starts from the RTC, if any; give it ours.
	if _, err := maitred.SetTime(ctx, &vmtools.SetTimeRequest{Time: timestamppb.Now()}); err != nil {
		log.Warn("bring-up: set time", "err", err)
	}
	if tz := m.opts.Timezone; tz != "" {
		if _, err := maitred.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: tz}); err != nil {
			log.Warn("bring-up: set timezone", "timezone", tz, "err", err)
		}
	}
}

// GuestReady is called when the agent of the VM key reports in
// (StartupListener.VmReady). It is idempotent: the agent reports on every
// new session.
func (m *Manager) GuestReady(key Key) error {
	v := m.lookup(key)
	if v == nil {
		return fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	v.markReady()
	return nil
}

func (m *Manager) lookup(key Key) *vm {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vms[key]
}

// Get returns the info of a VM that is not stopped.
func (m *Manager) Get(key Key) (Info, error) {
	v := m.lookup(key)
	if v == nil {
		return Info{}, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	select {
	case <-v.launched:
	default:
		// Still launching: report it as starting without waiting.
		return Info{Key: key, State: StateStarting}, nil
	}
	if v.launchErr != nil {
		return Info{}, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	return v.info(), nil
}

// List returns the VMs of owner that are not stopped, by name.
func (m *Manager) List(owner string) []Info {
	m.mu.Lock()
	var vs []*vm
	for k, v := range m.vms {
		if k.Owner == owner {
			vs = append(vs, v)
		}
	}
	m.mu.Unlock()
	var out []Info
	for _, v := range vs {
		if info, err := m.Get(v.key); err == nil {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b Info) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Logs returns a VM's console log and its rotations, at most 30 MiB, newest
// last. Logs of a stopped VM stay readable until it is started again.
func (m *Manager) Logs(key Key) ([]byte, error) {
	if err := ValidateName(key.Name); err != nil {
		return nil, err
	}
	if err := ValidateOwner(key.Owner); err != nil {
		return nil, err
	}
	dir := m.opts.Root.VM(statedir.VMID(key.Owner, key.Name))
	if _, err := os.Stat(dir.Record()); err != nil {
		return nil, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	return consolelog.Read(consoleFiles(dir), maxLogBytes)
}

// Agent returns the client connection to a VM's agent, waiting (until ctx
// ends) for the channel to come up.
func (m *Manager) Agent(ctx context.Context, key Key) (grpc.ClientConnInterface, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	select {
	case <-v.launched:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if v.launchErr != nil {
		return nil, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	cc, err := v.agent.conn(ctx)
	if err != nil {
		return nil, err
	}
	return cc, nil
}

// Stop stops a VM: it asks the guest to shut down, then escalates (see
// stop). Stopping a VM that does not exist succeeds.
func (m *Manager) Stop(ctx context.Context, key Key) error {
	v := m.lookup(key)
	if v == nil {
		return nil
	}
	return m.stop(ctx, v, StopRequested)
}

// StopAll stops every VM, concurrently.
func (m *Manager) StopAll(ctx context.Context) error {
	m.mu.Lock()
	vs := make([]*vm, 0, len(m.vms))
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	errs := make([]error, len(vs))
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.stop(ctx, v, StopAllRequested)
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
	select {
	case <-v.launched:
	case <-ctx.Done():
		return ctx.Err()
	}
	if v.launchErr != nil {
		return nil
	}
	v.transition.Lock()
	v.mu.Lock()
	hv := v.hv
	if v.state == StateStarting || v.state == StateRunning {
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
	select {
	case <-v.ready:
		steps = append(steps, step{"guest shutdown", func() error {
			sctx, cancel := context.WithTimeout(ctx, m.ladder.shutdownRPC)
			defer cancel()
			cc, err := v.agent.conn(sctx)
			if err != nil {
				return err
			}
			_, err = vmtools.NewMaitredClient(cc).Shutdown(sctx, &vmtools.EmptyMessage{})
			return err
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
		log.Warn("vm exited on its own")
	}
	hv.Close()
	m.publishStopped(v, reason)
}

// publishStopped marks v stopped, forgets it and announces it.
func (m *Manager) publishStopped(v *vm, reason StopReason) {
	v.transition.Lock()
	defer v.transition.Unlock()
	v.mu.Lock()
	v.state = StateStopped
	v.stopReason = reason
	cancel := v.cancel
	if v.rec != nil {
		v.rec.Alive = false
		if err := writeRecord(v.dir, v.rec); err != nil {
			m.log.Warn("record", "vm", v.key.String(), "err", err)
		}
	}
	v.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	removeRuntimeFiles(v.dir)
	m.mu.Lock()
	if m.vms[v.key] == v {
		delete(m.vms, v.key)
	}
	m.mu.Unlock()
	m.publish(EventStopped, v)
	close(v.stopped)
}

// SharedDirs lists the host directories shared with VMs whose hypervisor
// may be running: those this manager starts or watches, and those whose
// records say they live (a VM this daemon could not adopt may still run).
// The image builder keeps them (image.Builder.InUse): QEMU serves a
// share from the directory it opened at launch for the VM's whole life.
func (m *Manager) SharedDirs() ([]string, error) {
	var dirs []string
	m.mu.Lock()
	for _, v := range m.vms {
		v.mu.Lock()
		if v.rec != nil {
			for _, s := range v.rec.Shares {
				dirs = append(dirs, s.Path)
			}
		}
		v.mu.Unlock()
	}
	m.mu.Unlock()
	vmDirs, err := vmDirs(m.opts.Root)
	if err != nil {
		return nil, fmt.Errorf("vm records: %w", err)
	}
	for _, dir := range vmDirs {
		rec, err := readRecord(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue // a directory whose first record is being written
		}
		if err != nil {
			// Unreadable: it may describe a running VM, whose shares
			// are then unknown.
			return nil, err
		}
		if rec.Alive {
			for _, s := range rec.Shares {
				dirs = append(dirs, s.Path)
			}
		}
	}
	slices.Sort(dirs)
	return slices.Compact(dirs), nil
}

// Close detaches from every VM and leaves them running: a later daemon
// re-adopts them.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	var hvs []hypervisor.VM
	for _, v := range m.vms {
		v.mu.Lock()
		if v.hv != nil {
			hvs = append(hvs, v.hv)
		}
		v.mu.Unlock()
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	for _, hv := range hvs {
		hv.Close()
	}
}
