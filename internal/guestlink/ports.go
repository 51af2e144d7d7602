package guestlink

import (
	"context"
	"encoding/json"
	"errors"
	"os"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Ports is the channel's two virtio-serial ports as a per-VM resource: the
// agent's port (a yamux session carrying gRPC both ways) and the port for
// unary calls, each on a socket in the VM's directory, which are removed
// once the VM is gone.
type Ports struct{}

var _ resource.Kind = Ports{}

// Name is "channel".
func (Ports) Name() string { return "channel" }

// Prepare gives the VM the channel's ports.
func (Ports) Prepare(_ context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	cfg.Ports = append(cfg.Ports,
		hypervisor.Port{Name: bootcfg.AgentPort, Socket: vm.Dir.AgentSocket()},
		hypervisor.Port{Name: bootcfg.RPCPort, Socket: vm.Dir.RPCSocket()},
	)
	return portsHold{vm}, nil
}

// Adopt takes back the ports of a running VM; they keep no state.
func (Ports) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	return portsHold{vm}, nil
}

type portsHold struct{ vm resource.VM }

func (portsHold) State() json.RawMessage { return nil }

// Release removes the ports' sockets, which QEMU leaves behind when it is
// killed.
func (h portsHold) Release(context.Context) error {
	var errs []error
	for _, p := range []string{h.vm.Dir.AgentSocket(), h.vm.Dir.RPCSocket()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
