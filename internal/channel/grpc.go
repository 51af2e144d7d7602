package channel

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// window is the HTTP/2 flow-control window gRPC uses on a session, per
// stream and per connection. Setting it turns off gRPC's bandwidth-delay
// probing, which would otherwise send a PING (and wake the guest for its
// ack) on almost every call; on a virtio-serial port every frame costs a
// guest exit.
const window = 1 << 20

// ServerOptions are the options for a gRPC server serving sessions, to
// match what Dial sets on the other end.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(window),
		grpc.InitialConnWindowSize(window),
	}
}

// Dial returns a gRPC client whose connection is a stream of sess. It
// connects lazily, on the first call.
func Dial(sess *Session, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///cabin-channel", append([]grpc.DialOption{
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return sess.Open() }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(window),
		grpc.WithInitialConnWindowSize(window),
	}, opts...)...)
}
