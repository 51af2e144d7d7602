package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// fakeVM stands in for a QEMU process.
type fakeVM struct {
	cfg       hypervisor.Config
	dir       statedir.VMDir
	pid       int
	startTime uint64
	done      chan struct{}
	exitOnce  sync.Once
	// What the fake obeys: a VM that ignores a step forces escalation.
	obeyShutdown, obeyQuit, obeyTerm bool
	steps                            []string
	mu                               sync.Mutex
	closed                           atomic.Bool
	// connected is false for a VM found but not connected; hung makes
	// Connect wait for its context, as a stopped QEMU's monitor does.
	connected, hung atomic.Bool
	// paused is set while the vCPUs are stopped (Pause).
	paused atomic.Bool
}

func (f *fakeVM) Connect(ctx context.Context) error {
	if f.hung.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	f.connected.Store(true)
	return nil
}

func (f *fakeVM) PID() int              { return f.pid }
func (f *fakeVM) StartTime() uint64     { return f.startTime }
func (f *fakeVM) Done() <-chan struct{} { return f.done }
func (f *fakeVM) Resume(ctx context.Context) error {
	if !f.connected.Load() {
		return hypervisor.ErrNotConnected
	}
	if f.paused.Swap(false) {
		f.step("cont")
	}
	return nil
}
func (f *fakeVM) Close() error { f.closed.Store(true); return nil }
func (f *fakeVM) step(s string) {
	f.mu.Lock()
	f.steps = append(f.steps, s)
	f.mu.Unlock()
}
func (f *fakeVM) stepsSoFar() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.steps)
}
func (f *fakeVM) exit() {
	f.exitOnce.Do(func() { close(f.done) })
}
func (f *fakeVM) Pause(context.Context) error {
	if !f.connected.Load() {
		return hypervisor.ErrNotConnected
	}
	f.step("pause")
	f.paused.Store(true)
	return nil
}
func (f *fakeVM) Paused(context.Context) (bool, error) {
	if !f.connected.Load() {
		return false, hypervisor.ErrNotConnected
	}
	return f.paused.Load(), nil
}
func (f *fakeVM) Quit(context.Context) error {
	if !f.connected.Load() {
		return hypervisor.ErrNotConnected
	}
	f.step("quit")
	if f.obeyQuit {
		f.exit()
	}
	return nil
}
func (f *fakeVM) Signal(sig syscall.Signal) error {
	f.step(sig.String())
	if sig == syscall.SIGKILL || (sig == syscall.SIGTERM && f.obeyTerm) {
		f.exit()
	}
	return nil
}

type fakeLauncher struct {
	t        *testing.T
	launches atomic.Int32
	// configure adjusts each new fake VM.
	configure func(*fakeVM)
	mu        sync.Mutex
	vms       map[string]*fakeVM
}

// fakeClaim is a claim on a directory no live fake VM holds.
type fakeClaim struct{}

func (fakeClaim) Release() {}

// Claim refuses a directory whose fake VM has not exited, as the QEMU
// launcher does one whose QEMU holds its lock.
func (l *fakeLauncher) Claim(dir statedir.VMDir) (hypervisor.Claim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.vms[dir.Path()]; f != nil {
		select {
		case <-f.done:
		default:
			return nil, fmt.Errorf("fake pid %d: %w", f.pid, hypervisor.ErrInUse)
		}
	}
	return fakeClaim{}, nil
}

func (l *fakeLauncher) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	if c == nil {
		return nil, errors.New("launch without a claim")
	}
	n := l.launches.Add(1)
	if cfg.Kernel == "" || cfg.CPUs < 1 {
		return nil, fmt.Errorf("bad config %+v", cfg)
	}
	f := &fakeVM{cfg: cfg, dir: cfg.Dir, pid: 1000 + int(n), startTime: uint64(n), done: make(chan struct{}),
		obeyShutdown: true, obeyQuit: true, obeyTerm: true}
	f.connected.Store(true)
	if l.configure != nil {
		l.configure(f)
	}
	l.mu.Lock()
	l.vms[cfg.Dir.Path()] = f
	l.mu.Unlock()
	return f, nil
}

func (l *fakeLauncher) Adopt(ctx context.Context, dir statedir.VMDir, startTime uint64) (hypervisor.VM, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.vms[dir.Path()]
	if f == nil || f.startTime != startTime {
		return nil, fmt.Errorf("adopt: %w", hypervisor.ErrNotRunning)
	}
	select {
	case <-f.done:
		return nil, fmt.Errorf("adopt: %w", hypervisor.ErrNotRunning)
	default:
	}
	f.closed.Store(false)
	f.connected.Store(false)
	return f, nil
}

func (l *fakeLauncher) get(dir statedir.VMDir) *fakeVM {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.vms[dir.Path()]
}

// fakeGuests links to fake VMs' "agents": each link obeys, or not, as its
// VM says, and the agent reports in (GuestReady) as cabin-agent does when
// it connects, unless told not to.
type fakeGuests struct {
	launcher    *fakeLauncher
	m           func() *Manager
	reportReady bool
	dials       atomic.Int32
}

func (g *fakeGuests) Dial(vm resource.VM) GuestLink {
	g.dials.Add(1)
	l := &fakeLink{vm: g.launcher.get(vm.Dir)}
	if g.reportReady {
		m := g.m()
		go m.GuestReady(Key{Owner: vm.Owner, Name: vm.Name})
	}
	return l
}

type fakeLink struct {
	vm     *fakeVM
	closed atomic.Bool
}

func (l *fakeLink) SetTime(context.Context, time.Time) error { return nil }

func (l *fakeLink) SetTimezone(_ context.Context, name string) error {
	l.vm.step("timezone " + name)
	return nil
}

func (l *fakeLink) Shutdown(ctx context.Context) error {
	if l.vm.paused.Load() {
		// A suspended guest cannot answer.
		l.vm.step("shutdown unanswered")
		<-ctx.Done()
		return ctx.Err()
	}
	l.vm.step("shutdown")
	if l.vm.obeyShutdown {
		go l.vm.exit()
	}
	return nil
}

func (l *fakeLink) Close() { l.closed.Store(true) }

func (l *fakeLink) PrepareToSuspend(context.Context) error {
	l.vm.step("prepare to suspend")
	return nil
}

func (l *fakeLink) ConfigureNetwork(_ context.Context, n GuestNetwork) error {
	l.vm.step("network " + n.Address.String() + " via " + n.Gateway.String() + " dns " + strings.Join(n.DNS.Nameservers, ","))
	return nil
}

func (l *fakeLink) SetDNS(_ context.Context, d DNS) error {
	l.vm.step("dns " + strings.Join(d.Nameservers, ","))
	return nil
}

// fakeImage is the guest image resource: its kernel serves as initrd too,
// and its root filesystems are a directory shared with every VM, or an
// error for VMs that boot their own kernels.
type fakeImage struct {
	kernel, rootfs string

	mu        sync.Mutex
	rootfsErr error
}

func (i *fakeImage) Name() string { return "guest image" }

func (i *fakeImage) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if cfg.Kernel == "" && cfg.KernelFile == nil {
		cfg.Kernel, cfg.Initrd = i.kernel, i.kernel
	} else if i.rootfsErr != nil {
		return nopHold{}, nil
	}
	cfg.Shares = append(cfg.Shares, hypervisor.Share{Tag: bootcfg.RootfsTag, Path: i.rootfs, ReadOnly: true})
	return nopHold{}, nil
}

func (i *fakeImage) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return nopHold{}, nil
}

type nopHold struct{}

func (nopHold) State() json.RawMessage        { return nil }
func (nopHold) Release(context.Context) error { return nil }

// tracker is a resource that records, per VM, what it was asked to do,
// and keeps the VM's name as its state.
type tracker struct {
	mu    sync.Mutex
	steps map[string][]string
	// failPrepare, when set, fails the prepare of that VM.
	failPrepare string
}

func (r *tracker) Name() string { return "tracker" }

func (r *tracker) add(vm, step string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.steps == nil {
		r.steps = map[string][]string{}
	}
	r.steps[vm] = append(r.steps[vm], step)
}

// of is what the tracker did for vm, space-separated.
func (r *tracker) of(vm string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.steps[vm], " ")
}

func (r *tracker) Prepare(_ context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	r.add(vm.Name, "prepare")
	if vm.Name == r.failPrepare {
		return nil, errors.New("no luck")
	}
	cfg.KernelArgs = append(cfg.KernelArgs, "tracked="+vm.Name)
	return &trackerHold{r: r, vm: vm.Name}, nil
}

func (r *tracker) Adopt(_ context.Context, vm resource.VM, state json.RawMessage) (resource.Hold, error) {
	r.add(vm.Name, "adopt:"+string(state))
	return &trackerHold{r: r, vm: vm.Name}, nil
}

type trackerHold struct {
	r  *tracker
	vm string
}

func (h *trackerHold) State() json.RawMessage { return json.RawMessage(`"` + h.vm + `"`) }

func (h *trackerHold) Release(context.Context) error {
	h.r.add(h.vm, "release")
	return nil
}
