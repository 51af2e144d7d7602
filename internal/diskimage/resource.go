package diskimage

import (
	"context"
	"encoding/json"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Resource is the hold a VM keeps on its own image, the one of its name
// (concierge's stateful disk): its start fails with ErrBusy while an
// operation is under way on the image, and while it runs no operation
// that needs the VM stopped starts (see Hold). It attaches nothing yet:
// VMs boot an initramfs, and attaching images is the VM start's disks.
type Resource struct {
	Store *Store
}

var _ resource.Kind = Resource{}

func (Resource) Name() string { return "diskimage" }

func (r Resource) Prepare(_ context.Context, vm resource.VM, _ *hypervisor.Config) (resource.Hold, error) {
	release, err := r.Store.Hold(Key{Owner: vm.Owner, Name: vm.Name})
	if err != nil {
		return nil, err
	}
	return hold{release}, nil
}

// Adopt holds the image of a VM an earlier cabind started. No operation
// runs yet (Recover ended them), so the hold cannot fail for one; should
// one have started since, the VM runs all the same and the hold is
// counted anyway.
func (r Resource) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	key := Key{Owner: vm.Owner, Name: vm.Name}
	if r.Store.Busy(key) {
		vm.Log.Warn("adopted a VM whose image is under an operation", "image", key.String())
	}
	release, err := r.Store.hold(key, true)
	if err != nil {
		return nil, err
	}
	return hold{release}, nil
}

type hold struct{ release func() }

func (hold) State() json.RawMessage { return nil }

func (h hold) Release(context.Context) error {
	h.release()
	return nil
}
