package daemon

import (
	"context"
	"encoding/json"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/relay/readahead"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// newReadAhead returns the relay's read-ahead, which keeps its spools in
// the VMs' directories under root.
func newReadAhead(root statedir.Root) *readahead.Streams {
	return readahead.New(readahead.MaxStreams, func(owner, name string) string {
		return root.VM(statedir.VMID(owner, name)).ReadAheadDir()
	})
}

// readAheadKind ties what the relay reads ahead of a VM's processes to
// the VM's life: a VM that starts drops what an earlier run of it left
// (in memory and in spools), and so does a VM that is gone. An adopted
// VM keeps its spools for the clients reading on.
type readAheadKind struct{ ahead *readahead.Streams }

var _ resource.Kind = readAheadKind{}

// Name is "read-ahead".
func (readAheadKind) Name() string { return "read-ahead" }

func (k readAheadKind) Prepare(_ context.Context, vm resource.VM, _ *hypervisor.Config) (resource.Hold, error) {
	if err := k.ahead.ForgetVM(vm.Owner, vm.Name); err != nil {
		return nil, err
	}
	return readAheadHold{k: k, vm: vm}, nil
}

func (k readAheadKind) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	return readAheadHold{k: k, vm: vm}, nil
}

type readAheadHold struct {
	k  readAheadKind
	vm resource.VM
}

func (readAheadHold) State() json.RawMessage { return nil }

func (h readAheadHold) Release(context.Context) error {
	return h.k.ahead.ForgetVM(h.vm.Owner, h.vm.Name)
}
