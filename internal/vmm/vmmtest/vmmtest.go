// Package vmmtest gives tests outside the VM manager a manager whose VMs
// are fakes: a launcher whose "hypervisors" run until stopped, and guest
// links whose agents report in at once. The manager itself is the real
// one.
package vmmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Env is a manager over fake VMs.
type Env struct {
	M    *vmm.Manager
	Root statedir.Root
	// Agent, when set, is the connection each VM's guest link hands the
	// relay (Link.Conn): a test's fake agent.
	Agent grpc.ClientConnInterface
	// LaunchErr, when set, is what every launch fails with, as QEMU's
	// own error would be.
	LaunchErr error
	// DialPort, when set, is what each VM's guest link does for
	// Guest.DialPort: a test's fake guest ports.
	DialPort func(ctx context.Context, key vmm.Key, proto string, port int) (net.Conn, error)
	// Unready, when set, keeps VMs started from then on starting: their
	// agents never report in.
	Unready atomic.Bool
	// ShutdownGate, when set, holds each guest's Shutdown (and so a
	// stop, in StateStopping) until it is closed or the call's context
	// ends.
	ShutdownGate chan struct{}
	// GuestCall, when set, is told each call made into a VM's guest, by
	// method name (SetTime, PrepareToSuspend, SetUpUser, KernelVersion,
	// Shutdown).
	GuestCall func(key vmm.Key, method string)
}

// New returns a manager over fake VMs on a fresh state dir, closed when
// the test ends. VMs boot the image's "kernel" unless they bring their
// own, and are running once their start returns and the started event
// went out. They hold the resources of kinds too, after the image.
func New(t *testing.T, kinds ...resource.Kind) *Env {
	t.Helper()
	root := statedirtest.New(t)
	kernel := filepath.Join(root.Dir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &Env{Root: root}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	l := &launcher{e: e, vms: map[statedir.VMDir]*fakeVM{}}
	m, err := vmm.New(vmm.Options{
		Root: root, Launcher: l,
		Resources: append([]resource.Kind{image{kernel}}, kinds...), Guests: &guests{e: e, l: l},
		Accel: hypervisor.AccelTCG, Host: vmm.Host{CPUs: 4, MemoryMiB: 4096}, DefaultMemoryMiB: 256, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.M = m
	t.Cleanup(m.Close)
	if err := m.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e
}

// Start starts a VM and waits until it runs.
func (e *Env) Start(t *testing.T, spec vmm.Spec) {
	t.Helper()
	events, cancel := e.M.Subscribe()
	defer cancel()
	if spec.CPUs == 0 {
		spec.CPUs = 1
	}
	if _, _, err := e.M.Start(context.Background(), spec); err != nil {
		t.Fatalf("start %s: %v", spec.Key, err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Kind == vmm.EventStarted && ev.Info.Key == spec.Key {
				return
			}
		case <-timeout:
			t.Fatalf("%s did not start", spec.Key)
		}
	}
}

// image gives VMs without a kernel of their own the test's.
type image struct{ kernel string }

func (i image) Name() string { return "guest image" }

func (i image) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	if cfg.Kernel == "" && cfg.KernelFile == nil {
		cfg.Kernel = i.kernel
	}
	return nopHold{}, nil
}

func (i image) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return nopHold{}, nil
}

type nopHold struct{}

func (nopHold) State() json.RawMessage        { return nil }
func (nopHold) Release(context.Context) error { return nil }

type launcher struct {
	e    *Env
	mu   sync.Mutex
	vms  map[statedir.VMDir]*fakeVM
	pids atomic.Int32
}

type claim struct{}

func (claim) Release() {}

func (l *launcher) Claim(dir statedir.VMDir) (hypervisor.Claim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.vms[dir]; v != nil && !v.exited() {
		return nil, fmt.Errorf("fake pid %d: %w", v.pid, hypervisor.ErrInUse)
	}
	return claim{}, nil
}

func (l *launcher) Launch(_ context.Context, _ hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	if l.e.LaunchErr != nil {
		return nil, l.e.LaunchErr
	}
	v := &fakeVM{pid: 10000 + int(l.pids.Add(1)), done: make(chan struct{})}
	v.balloon.memory = int64(cfg.MemoryMiB) << 20
	l.mu.Lock()
	l.vms[cfg.Dir] = v
	l.mu.Unlock()
	return v, nil
}

func (l *launcher) Adopt(_ context.Context, dir statedir.VMDir, start uint64) (hypervisor.VM, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.vms[dir]; v != nil && !v.exited() && v.StartTime() == start {
		return v, nil
	}
	return nil, hypervisor.ErrNotRunning
}

// fakeVM is a "hypervisor" that runs until it is quit or signalled.
type fakeVM struct {
	pid    int
	done   chan struct{}
	once   sync.Once
	paused atomic.Bool
	// balloon is its memory balloon (balloon.go).
	balloon fakeBalloon
}

func (v *fakeVM) PID() int                        { return v.pid }
func (v *fakeVM) StartTime() uint64               { return uint64(v.pid) }
func (v *fakeVM) Done() <-chan struct{}           { return v.done }
func (v *fakeVM) Connect(context.Context) error   { return nil }
func (v *fakeVM) Resume(context.Context) error    { v.paused.Store(false); return nil }
func (v *fakeVM) Quit(context.Context) error      { v.exit(); return nil }
func (v *fakeVM) Signal(sig syscall.Signal) error { v.exit(); return nil }
func (v *fakeVM) Close() error                    { return nil }
func (v *fakeVM) exit()                           { v.once.Do(func() { close(v.done) }) }
func (v *fakeVM) Pause(context.Context) error     { v.paused.Store(true); return nil }

func (v *fakeVM) Paused(context.Context) (bool, error) { return v.paused.Load(), nil }

func (v *fakeVM) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

type guests struct {
	e *Env
	l *launcher
}

// Dial reports the VM's agent in at once, unless the Env is Unready.
func (g *guests) Dial(vm resource.VM) vmm.GuestLink {
	if !g.e.Unready.Load() {
		go g.e.M.GuestReady(vmm.Key{Owner: vm.Owner, Name: vm.Name})
	}
	g.l.mu.Lock()
	defer g.l.mu.Unlock()
	return &Link{e: g.e, vm: g.l.vms[vm.Dir], key: vmm.Key{Owner: vm.Owner, Name: vm.Name}}
}

// Link is a fake VM's guest link: the guest powers off at once when asked.
type Link struct {
	e   *Env
	vm  *fakeVM
	key vmm.Key

	usersMu sync.Mutex
	users   map[uint32]string
}

func (l *Link) SetTimezone(context.Context, string) error                { return nil }
func (l *Link) Close()                                                   {}
func (l *Link) ConfigureNetwork(context.Context, vmm.GuestNetwork) error { return nil }
func (l *Link) SetDNS(context.Context, vmm.DNS) error                    { return nil }

// SetTime sets nothing: the guest is a fake.
func (l *Link) SetTime(context.Context, time.Time) error {
	l.called("SetTime")
	return nil
}

func (l *Link) called(method string) {
	if l.e.GuestCall != nil {
		l.e.GuestCall(l.key, method)
	}
}

// PrepareToSuspend is vmm.GuestSuspender's.
func (l *Link) PrepareToSuspend(context.Context) error {
	l.called("PrepareToSuspend")
	return nil
}

// FakeKernel is what every fake guest says it runs.
const FakeKernel = "6.1.0-cabin-fake #1 SMP PREEMPT_DYNAMIC"

// KernelVersion is vmm.GuestKernel's.
func (l *Link) KernelVersion(context.Context) (string, error) {
	l.called("KernelVersion")
	return FakeKernel, nil
}

// SetUpUser is vmm.GuestUsers': each guest has root and "games" (uid
// 5) to begin with.
func (l *Link) SetUpUser(_ context.Context, u vmm.User) (string, error) {
	l.called("SetUpUser")
	l.usersMu.Lock()
	defer l.usersMu.Unlock()
	if l.users == nil {
		l.users = map[uint32]string{0: "root", 5: "games"}
	}
	if other, ok := l.users[u.UID]; ok && other != u.Name {
		return other, fmt.Errorf("another user with uid %d already exists: %w", u.UID, errdefs.ErrAlreadyExists)
	}
	for uid, name := range l.users {
		if name == u.Name && uid != u.UID {
			return u.Name, fmt.Errorf("user exists, but with a different uid: %d: %w", uid, errdefs.ErrAlreadyExists)
		}
	}
	l.users[u.UID] = u.Name
	return u.Name, nil
}

func (l *Link) Shutdown(ctx context.Context) error {
	l.called("Shutdown")
	if gate := l.e.ShutdownGate; gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if l.vm != nil {
		l.vm.exit()
	}
	return nil
}

// DialPort is the test's Env.DialPort.
func (l *Link) DialPort(ctx context.Context, proto string, port int) (net.Conn, error) {
	if l.e.DialPort == nil {
		return nil, fmt.Errorf("no guest ports in this test: %w", errdefs.ErrUnavailable)
	}
	return l.e.DialPort(ctx, l.key, proto, port)
}

// Conn is the test's fake agent, as guestlink.Link.Conn is the VM's.
func (l *Link) Conn(context.Context) (grpc.ClientConnInterface, error) {
	if l.e.Agent == nil {
		return nil, fmt.Errorf("no agent in this test: %w", errdefs.ErrUnavailable)
	}
	return l.e.Agent, nil
}
