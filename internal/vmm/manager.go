// Package vmm is cabind's VM manager: it starts VMs through a hypervisor
// Launcher, keeps each VM's state machine (starting → running → stopping →
// stopped), its on-disk record and the host resources it holds (a fixed
// list of resource kinds, prepared before its hypervisor starts and
// released once it is gone), links to its guest agent (GuestDialer),
// publishes state changes as events, and re-adopts running VMs when a new
// daemon starts. It knows nothing of the APIs it is served through: no
// protobuf, no gRPC.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Options configure a Manager.
type Options struct {
	Root     statedir.Root
	Launcher hypervisor.Launcher
	// Resources are the kinds of host resource every VM holds, prepared
	// in this order before its hypervisor starts and released in the
	// reverse order once it is gone. One of them must give VMs that do
	// not bring their own a kernel (internal/guestimage).
	Resources []resource.Kind
	// Guests links the manager to each VM's agent.
	Guests GuestDialer
	// Accel is the accelerator for VMs that do not ask for one.
	Accel hypervisor.Accel
	// Host limits what a VM may ask for.
	Host Host
	// DefaultMemoryMiB is the RAM of VMs that do not ask for an amount.
	DefaultMemoryMiB int
	// Timezone is the zone guests are set to at bring-up (a name under
	// /usr/share/zoneinfo, such as "Europe/Paris"); none when empty.
	Timezone string
	// DNS is the DNS settings guests with a network are first given
	// (SetDNS changes them).
	DNS DNS
	Log *slog.Logger
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
	// adoptRetry is the wait between attempts at an unreachable VM.
	adoptRetry time.Duration
	// ctx outlives every RPC: it bounds the goroutines serving VMs.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	vms     map[Key]*vm
	nextCID int64
	closed  bool
	dns     DNS

	// Host files GetVmGpuCachePath and GetVmLaunchAllowed read; the
	// real ones when empty (tests set them).
	bootIDFile, meminfoFile, vulnDir string

	// balloons is the balloon timer's state (memory.go).
	balloons balloonTimer
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
		adoptRetry:   defaultAdoptRetry,
		ctx:          ctx,
		cancel:       cancel,
		vms:          map[Key]*vm{},
		nextCID:      firstCID,
		dns:          opts.DNS,
	}
	return m, nil
}

// Subscribe streams events; see Bus.Subscribe.
func (m *Manager) Subscribe() (<-chan Event, func()) { return m.bus.Subscribe() }

func (m *Manager) publish(kind EventKind, v *vm) {
	e := Event{Kind: kind, Time: time.Now(), Info: v.info()}
	if kind == EventStopped {
		v.mu.Lock()
		e.Reason, e.Detail = v.stopReason, v.stopDetail
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
	spec.Type = m.startType(spec)
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
		v.launchedOnce.Do(func() { close(v.launched) })
		return Info{}, false, err
	}
	v.launchedOnce.Do(func() { close(v.launched) })
	return v.info(), true, nil
}

// existing answers a start of a VM that is already there.
func (m *Manager) existing(ctx context.Context, v *vm) (Info, bool, error) {
	if err := m.adoption(ctx, v); err != nil {
		return Info{}, false, err
	}
	if v.launchErr != nil {
		return Info{}, false, v.launchErr
	}
	info := v.info()
	switch info.State {
	case StateStopping, StateStopped:
		return Info{}, false, fmt.Errorf("vm %s is stopping: %w", v.key, errdefs.ErrFailedPrecondition)
	case StateUnreachable:
		return Info{}, false, fmt.Errorf("vm %s is unreachable (%s); stop it before starting it again: %w",
			v.key, info.Problem, errdefs.ErrFailedPrecondition)
	}
	return info, false, nil
}

// GuestReady is called when the agent of the VM key reports in
// (StartupListener.VmReady). It is idempotent: the agent reports on every
// new session.
func (m *Manager) GuestReady(key Key) error {
	v := m.lookup(key)
	if v == nil {
		return errNoVM(key)
	}
	v.markReady()
	select {
	case v.reported <- struct{}{}:
	default:
	}
	return nil
}

func (m *Manager) lookup(key Key) *vm {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vms[key]
}

// Get returns the info of a VM that is not stopped. For a VM being taken
// back by a restarted cabind it waits for the first attempt (a bounded
// time).
func (m *Manager) Get(key Key) (Info, error) {
	v := m.lookup(key)
	if v == nil {
		return Info{}, errNoVM(key)
	}
	if v.adopted {
		if err := m.adoption(context.Background(), v); err != nil {
			return Info{}, err
		}
	}
	info, ok := v.current()
	if !ok {
		return Info{}, errNoVM(key)
	}
	return info, nil
}

// List returns the VMs of owner that are not stopped, by name, without
// waiting for any: a VM still being taken back is StateAdopting.
func (m *Manager) List(owner string) []Info {
	return m.list(func(k Key) bool { return k.Owner == owner })
}

// ListAll returns the VMs of every owner, by owner then name: for the
// daemon's own view of the host (metrics), never for a caller.
func (m *Manager) ListAll() []Info {
	return m.list(func(Key) bool { return true })
}

func (m *Manager) list(which func(Key) bool) []Info {
	m.mu.Lock()
	var vs []*vm
	for k, v := range m.vms {
		if which(k) {
			vs = append(vs, v)
		}
	}
	m.mu.Unlock()
	var out []Info
	for _, v := range vs {
		if info, ok := v.current(); ok {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b Info) int {
		if c := strings.Compare(a.Owner, b.Owner); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Guest returns the link to a VM's agent, waiting (until ctx ends) for a
// VM being launched. The link's calls wait for the agent to connect.
func (m *Manager) Guest(ctx context.Context, key Key) (GuestLink, error) {
	v := m.lookup(key)
	if v == nil {
		return nil, errNoVM(key)
	}
	if err := m.adoption(ctx, v); err != nil {
		return nil, err
	}
	if v.launchErr != nil {
		return nil, errNoVM(key)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.guest == nil {
		if v.state == StateUnreachable {
			return nil, fmt.Errorf("vm %s is unreachable: %s: %w", key, v.problem, errdefs.ErrUnavailable)
		}
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "vm %s has stopped", key)
	}
	return v.guest, nil
}

// Close detaches from every VM and leaves them running: a later daemon
// re-adopts them.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	vs := make([]*vm, 0, len(m.vms))
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	for _, v := range vs {
		m.detach(v)
	}
}

// detach lets go of a VM that keeps running without this daemon: its
// guest link, its hypervisor's control connection and what its resources
// keep while cabind runs. Nothing is released; the next cabind adopts it.
func (m *Manager) detach(v *vm) {
	v.mu.Lock()
	hv, guest, res := v.hv, v.guest, v.res
	v.mu.Unlock()
	if guest != nil {
		guest.Close()
	}
	if res != nil {
		res.Detach()
	}
	if hv != nil {
		hv.Close()
	}
}
