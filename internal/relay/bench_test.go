package relay

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/client"
	"github.com/cabinvm/cabin/internal/unary"
)

// unaryAgent serves Maitred over the unary framing on a unix socket, as an
// agent's RPC port does, and returns a client for it.
func unaryAgent(b *testing.B) *unary.Conn {
	dir, _ := os.MkdirTemp("", "rb")
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "rpc.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lis.Close() })
	srv := channel.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	vmtools.RegisterMaitredServer(srv, agentMaitred{})
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go srv.ServeUnary(c)
		}
	}()
	return unary.NewConn(func(context.Context) (net.Conn, error) { return net.Dial("unix", sock) }, nil)
}

// BenchmarkDirectUnary calls the agent without the relay.
func BenchmarkDirectUnary(b *testing.B) {
	c := vmtools.NewMaitredClient(unaryAgent(b))
	for b.Loop() {
		if _, err := c.GetKernelVersion(context.Background(), &vmtools.EmptyMessage{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayedUnary calls the agent through a relaying gRPC server on a
// unix socket, as a client of cabind does; server and client are set up as
// cabind and cabin's own client are.
func BenchmarkRelayedUnary(b *testing.B) {
	agent := unaryAgent(b)
	r := New(func(context.Context, string, string) (grpc.ClientConnInterface, error) { return agent, nil }, nil)
	srv := grpc.NewServer(append([]grpc.ServerOption{
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}, r.ServerOptions()...)...)
	dir, _ := os.MkdirTemp("", "rb")
	b.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(lis)
	b.Cleanup(srv.Stop)
	cc, err := client.Dial(sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	c := vmtools.NewMaitredClient(cc)
	ctx := toVM("vm1")
	for b.Loop() {
		if _, err := c.GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
			b.Fatal(err)
		}
	}
}
