package daemon

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/vmm"
)

// startupListener serves vm_tools.StartupListener to guests, on their
// channels only: a guest is untrusted, and this server offers it nothing
// else.
type startupListener struct {
	vmtools.UnimplementedStartupListenerServer
	m *vmm.Manager
}

func (s *startupListener) VmReady(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	key, err := guestKey(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.m.GuestReady(key); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &vmtools.EmptyMessage{}, nil
}

// guestKey is the VM a guest call comes from; calls from anywhere else are
// refused.
func guestKey(ctx context.Context) (vmm.Key, error) {
	p, ok := peer.FromContext(ctx)
	if ok {
		if key, ok := vmm.PeerKey(p.Addr); ok {
			return key, nil
		}
	}
	return vmm.Key{}, status.Error(codes.FailedPrecondition, "call does not come from a known VM")
}
