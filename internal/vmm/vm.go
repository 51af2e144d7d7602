package vmm

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// State is where a VM is in its life.
type State int

const (
	// StateStarting: the hypervisor runs; the guest agent has not reported.
	StateStarting State = iota + 1
	// StateRunning: the agent reported and bring-up is done.
	StateRunning
	// StateStopping: a stop is under way.
	StateStopping
	// StateStopped: the hypervisor process is gone.
	StateStopped
	// StateAdopting: a restarted cabind is taking the VM back.
	StateAdopting
	// StateUnreachable: the VM's hypervisor may run, but cabind cannot
	// control it (its monitor does not answer, or its process cannot be
	// identified); Info.Problem says why. cabind keeps trying, and a
	// stop still ends it.
	StateUnreachable
)

func (s State) String() string {
	switch s {
	case StateStarting:
		return "starting"
	case StateRunning:
		return "running"
	case StateStopping:
		return "stopping"
	case StateStopped:
		return "stopped"
	case StateAdopting:
		return "adopting"
	case StateUnreachable:
		return "unreachable"
	}
	return "unknown"
}

// Info describes a VM.
type Info struct {
	Key
	State     State
	PID       int
	CID       int64
	CPUs      int
	MemoryMiB int
	Accel     hypervisor.Accel
	Type      VMType
	StartedAt time.Time
	// Adopted is set for a VM this daemon re-attached to after a restart.
	Adopted bool
	// Problem says why a VM is StateUnreachable.
	Problem string
	// IPv4 is the guest's address, when it has a network of its own.
	IPv4 netip.Addr
	// Suspended is set for a running VM whose vCPUs Suspend stopped.
	// Its State stays StateRunning, as upstream reports a suspended VM.
	Suspended bool
	// Disks are the VM's block devices; Shares its shared host folders
	// (disks.go).
	Disks  []DiskInfo
	Shares []ShareInfo
	// StoppedAt, StopReason and StopDetail describe how a stopped VM's
	// last run ended (Manager.Stopped).
	StoppedAt  time.Time
	StopReason StopReason
	StopDetail string
}

// vm is one VM the manager owns.
type vm struct {
	key Key
	dir statedir.VMDir

	// launched is closed when the launch phase ends, successfully or not
	// (launchErr); concurrent starts of the same key wait on it.
	launched     chan struct{}
	launchedOnce sync.Once
	launchErr    error

	// ready is closed when the guest agent first reports in.
	ready     chan struct{}
	readyOnce sync.Once

	// stopped is closed once the VM is fully stopped and cleaned up.
	stopped chan struct{}
	// cancel ends the goroutine that watches the VM's process.
	cancel context.CancelFunc

	// res is what the VM holds on the host; nil until prepared or
	// adopted. It is released once the VM's process is gone.
	res *resource.Set
	// guest is the link to the VM's agent; nil until its hypervisor runs.
	guest GuestLink

	// transition makes a change of state and the event announcing it one
	// step, so subscribers see Started, Stopping and Stopped in the order
	// the state changed. Taken before mu.
	transition sync.Mutex

	mu         sync.Mutex
	rec        *record
	state      State
	problem    string
	hv         hypervisor.VM
	adopted    bool
	stopReason StopReason
	// stopDetail says in words why a VM stopped on its own (a start
	// timeout, QEMU's last words); "" when it was asked to.
	stopDetail string
	// ladderDone is closed when a stop's escalation ladder has run its
	// course without the process exiting; ladderErr says why. Nil until a
	// stop begins.
	ladderDone chan struct{}
	ladderErr  error
	// hotplug serializes the VM's hot-plug calls and the release of
	// what they took (hotplug.go). Taken before mu.
	hotplug sync.Mutex
	// suspended is set while Suspend has the vCPUs stopped (see
	// suspend.go); power serializes suspend, resume and a stop's
	// resuming of a suspended VM. Taken before mu.
	suspended bool
	power     sync.Mutex
	// staleLink is set for a VM adopted suspended: its guest link was
	// made while the guest could not see the old one go (see relink).
	// reported gets a token each time the agent reports in, on every
	// new session.
	staleLink bool
	reported  chan struct{}
	// mem is the VM's memory balloon's state (memory.go).
	mem vmMemory
}

func newVM(key Key, dir statedir.VMDir) *vm {
	return &vm{
		key:      key,
		dir:      dir,
		launched: make(chan struct{}),
		ready:    make(chan struct{}),
		stopped:  make(chan struct{}),
		reported: make(chan struct{}, 1),
		state:    StateStarting,
	}
}

func (v *vm) info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := Info{Key: v.key, State: v.state, Adopted: v.adopted, Problem: v.problem, Suspended: v.suspended}
	if r := v.rec; r != nil {
		in.PID = r.PID
		in.CID = r.CID
		in.CPUs = r.CPUs
		in.MemoryMiB = r.MemoryMiB
		in.Accel = hypervisor.Accel(r.Accel)
		in.Type = VMType(r.VMType)
		in.StartedAt = r.StartedAt
		in.Disks, in.Shares = r.diskInfo()
	}
	if n, ok := resource.Find[Networked](v.res); ok {
		in.IPv4 = n.GuestNetwork().Address.Addr()
	}
	return in
}

// ref is the VM as its resources and its guest link know it.
func (v *vm) ref(log *slog.Logger) resource.VM {
	v.mu.Lock()
	defer v.mu.Unlock()
	ref := resource.VM{Owner: v.key.Owner, Name: v.key.Name, Dir: v.dir, Log: log}
	if v.rec != nil {
		ref.Network = v.rec.Network
		ref.Type = int32(v.rec.VMType)
	}
	return ref
}

// current is v's info as it stands, without waiting: false for a VM whose
// launch failed. A VM still launching is starting.
func (v *vm) current() (Info, bool) {
	select {
	case <-v.launched:
		if v.launchErr != nil {
			return Info{}, false
		}
	default:
		if !v.adopted {
			return Info{Key: v.key, State: StateStarting}, true
		}
	}
	return v.info(), true
}

// is tells whether v is in state s.
func (v *vm) is(s State) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state == s
}

func (v *vm) markReady() {
	v.readyOnce.Do(func() { close(v.ready) })
}
