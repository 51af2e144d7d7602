// Package client connects cabin's own programs (the CLI, the benchmark) to
// cabind's API socket.
package client

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// window is a fixed HTTP/2 flow-control window. Fixing it turns off gRPC's
// bandwidth-delay probing, which pings the daemon on most calls; on a local
// socket there is no bandwidth to probe.
const window = 1 << 20

// Dial returns a client of the cabind serving on the unix socket at path.
// It connects lazily, on the first call.
func Dial(path string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(window),
		grpc.WithInitialConnWindowSize(window),
	}, opts...)...)
}
