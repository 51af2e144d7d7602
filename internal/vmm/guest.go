package vmm

import (
	"context"
	"time"

	"github.com/cabinvm/cabin/internal/resource"
)

// Guest is what the manager asks of a VM's agent. internal/guestlink
// implements it over Maitred; each call waits (until ctx ends) for the
// agent to be connected.
type Guest interface {
	// SetTime sets the guest's clock.
	SetTime(ctx context.Context, t time.Time) error
	// SetTimezone sets the guest's time zone, a name under
	// /usr/share/zoneinfo.
	SetTimezone(ctx context.Context, name string) error
	// Shutdown asks the guest to power off.
	Shutdown(ctx context.Context) error
}

// GuestLink is the manager's link to one VM's agent, kept up (and made
// again after each disconnection) until Close.
type GuestLink interface {
	Guest
	// Close ends the link; the VM is not affected.
	Close()
}

// GuestDialer links the manager to guest agents.
type GuestDialer interface {
	// Dial starts linking to the agent of vm, whose hypervisor runs: at
	// launch before its vCPUs do, and at adoption. It does not wait for
	// the agent.
	Dial(vm resource.VM) GuestLink
}
