package vmm

import (
	"context"
	"log/slog"
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
}

// vm is one VM the manager owns.
type vm struct {
	key Key
	dir statedir.VMDir

	// launched is closed when the launch phase ends, successfully or not
	// (launchErr); concurrent starts of the same key wait on it.
	launched  chan struct{}
	launchErr error

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
	hv         hypervisor.VM
	adopted    bool
	stopReason StopReason
	// ladderDone is closed when a stop's escalation ladder has run its
	// course without the process exiting; ladderErr says why. Nil until a
	// stop begins.
	ladderDone chan struct{}
	ladderErr  error
}

func newVM(key Key, dir statedir.VMDir) *vm {
	return &vm{
		key:      key,
		dir:      dir,
		launched: make(chan struct{}),
		ready:    make(chan struct{}),
		stopped:  make(chan struct{}),
		state:    StateStarting,
	}
}

func (v *vm) info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := Info{Key: v.key, State: v.state, Adopted: v.adopted}
	if r := v.rec; r != nil {
		in.PID = r.PID
		in.CID = r.CID
		in.CPUs = r.CPUs
		in.MemoryMiB = r.MemoryMiB
		in.Accel = hypervisor.Accel(r.Accel)
		in.Type = VMType(r.VMType)
		in.StartedAt = r.StartedAt
	}
	return in
}

// ref is the VM as its resources and its guest link know it.
func (v *vm) ref(log *slog.Logger) resource.VM {
	return resource.VM{Owner: v.key.Owner, Name: v.key.Name, Dir: v.dir, Log: log}
}

func (v *vm) markReady() {
	v.readyOnce.Do(func() { close(v.ready) })
}
