package listeners

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/vmtools"
)

// A call that does not come over a VM's channel is refused, whatever it
// says: the listener never learns a VM from the caller's word.
func TestVmReadyOnlyFromAVMsChannel(t *testing.T) {
	s := NewStartup(nil)
	for name, ctx := range map[string]context.Context{
		"no peer":       context.Background(),
		"a unix socket": peer.NewContext(context.Background(), &peer.Peer{Addr: &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}}),
	} {
		_, err := s.VmReady(ctx, &vmtools.EmptyMessage{})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: %v, want FAILED_PRECONDITION", name, err)
		}
	}
}
