// Package grpctest serves gRPC services in memory for tests, with the
// callers cabind's socket server would put in each call's context
// (internal/caller) chosen by the test instead of by the connection's
// credentials, which would take a process per uid.
package grpctest

import (
	"context"
	"net"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cabinvm/cabin/internal/caller"
)

// Serve serves what register registers, on an in-memory listener, until
// the test ends, and returns a client of it.
func Serve(t testing.TB, register func(*grpc.Server), opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(opts...)
	register(s)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///grpctest",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Callers returns server options that put in each call's context the
// caller whom from makes of the call's incoming context.
func Callers(from func(context.Context) *caller.Caller) []grpc.ServerOption {
	with := func(ctx context.Context) context.Context {
		if c := from(ctx); c != nil {
			return caller.NewContext(ctx, c)
		}
		return ctx
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(with(ctx), req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, &stream{ServerStream: ss, ctx: with(ss.Context())})
		}),
	}
}

// As returns server options that make c the caller of every call.
func As(c *caller.Caller) []grpc.ServerOption {
	return Callers(func(context.Context) *caller.Caller { return c })
}

// UIDKey is the metadata UIDs reads a call's caller from.
const UIDKey = "x-test-uid"

// UIDs returns server options that take each call's caller from the uid
// its metadata names under UIDKey (see AsUID); a call naming none has no
// caller, as the daemon's own calls.
func UIDs() []grpc.ServerOption {
	return Callers(func(ctx context.Context) *caller.Caller {
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get(UIDKey)
		if len(v) == 0 {
			return nil
		}
		uid, _ := strconv.ParseUint(v[0], 10, 32)
		return &caller.Caller{UID: uint32(uid)}
	})
}

// AsUID is a context for calls by uid to a server with UIDs, with more
// metadata kv.
func AsUID(uid int, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), append([]string{UIDKey, strconv.Itoa(uid)}, kv...)...)
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }
