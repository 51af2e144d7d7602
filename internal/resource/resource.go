// Package resource gives the host resources a VM holds for its life a
// lifecycle: the console log, the channel's sockets, the container root
// filesystems share, and later taps and addresses, disks, cgroups and a
// jail directory. Each kind prepares what a VM needs before its hypervisor
// starts (and may add devices and kernel arguments to its configuration),
// records what it took in the VM's record, releases it once the VM is gone,
// and takes it back when a restarted cabind adopts the VM.
//
// The VM manager runs a fixed list of kinds for every VM through a Set; the
// kinds know nothing of the manager.
package resource

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// VM is what a resource knows of the VM it serves.
type VM struct {
	Owner, Name string
	// Dir is the VM's directory: a resource's files there are named in
	// statedir.
	Dir statedir.VMDir
	// Log is the VM's logger.
	Log *slog.Logger
	// Network is the network the VM's start asked for: "tap", "user",
	// "none", or "" for the daemon's default (internal/network).
	Network string
	// Type is what the VM is for, as its client said: a vmm.VMType
	// (concierge's VmType numbering), which picks its CPU class
	// (internal/hostcgroup).
	Type int32
}

// Kind is one kind of host resource that VMs hold.
type Kind interface {
	// Name names the kind: the key of its state in VM records, and in
	// logs. Unique among the kinds of a manager.
	Name() string
	// Prepare acquires the resource for vm before its hypervisor starts,
	// adding to cfg what the hypervisor needs of it (devices, kernel
	// arguments). A Prepare that fails holds nothing.
	Prepare(ctx context.Context, vm VM, cfg *hypervisor.Config) (Hold, error)
	// Adopt takes back what vm holds from an earlier cabind, given the
	// state its hold recorded (nil when the record has none: the VM was
	// launched before the kind existed).
	Adopt(ctx context.Context, vm VM, state json.RawMessage) (Hold, error)
}

// Hold is one VM's hold on a resource.
type Hold interface {
	// State is what the VM's record keeps of the hold, for Adopt; nil
	// when there is nothing to keep.
	State() json.RawMessage
	// Release frees the resource once the VM's hypervisor is gone, or
	// never started. It is called once.
	Release(ctx context.Context) error
}

// Starter is a Hold with work to do once the hypervisor runs and before
// its vCPUs do, both at launch and at adoption: attaching to the console
// so that no output is lost.
type Starter interface {
	Start(ctx context.Context, hv hypervisor.VM) error
}

// Detacher is a Hold with something to let go of when cabind stops and
// leaves the VM running (a goroutine copying its console). The next cabind
// adopts the resource; nothing is released.
type Detacher interface {
	Detach()
}
