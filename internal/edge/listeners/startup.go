// Package listeners is cabind's edge for the services guests call on
// their channels: StartupListener now, TremplinListener later. A guest is
// untrusted: these services are served to guests only, on their own
// channels, and a call is taken to come from the VM whose channel it came
// on (guestlink.PeerOf), never from what it says.
package listeners

import (
	"context"

	"google.golang.org/grpc/peer"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guestlink"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Startup serves vm_tools.StartupListener.
type Startup struct {
	vmtools.UnimplementedStartupListenerServer
	m *vmm.Manager
}

// NewStartup returns the StartupListener edge over m.
func NewStartup(m *vmm.Manager) *Startup { return &Startup{m: m} }

func (s *Startup) VmReady(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	key, err := guestKey(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.m.GuestReady(key); err != nil {
		// Upstream refuses a VM it does not know with FAILED_PRECONDITION.
		return nil, errgrpc.Errorf(errdefs.ErrFailedPrecondition, "%v", err)
	}
	return &vmtools.EmptyMessage{}, nil
}

// guestKey is the VM a guest call comes from; calls from anywhere else are
// refused.
func guestKey(ctx context.Context) (vmm.Key, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if vm, ok := guestlink.PeerOf(p.Addr); ok {
			return vmm.Key{Owner: vm.Owner, Name: vm.Name}, nil
		}
	}
	return vmm.Key{}, errgrpc.Errorf(errdefs.ErrFailedPrecondition, "call does not come from a known VM")
}
