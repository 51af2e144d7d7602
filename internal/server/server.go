// Package server is cabind's socket server, apart from the APIs it serves:
// it listens on the unix socket, learns each caller from the kernel
// (SO_PEERCRED) and puts it in every call's context (internal/caller), logs
// calls, and stops gracefully, ending the streams still open with a status
// that says cabind is stopping. It serves gRPC today; ttrpc and D-Bus are to
// plug in beside it, without touching the API packages.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/statedir"
)

// stopGrace is how long a stopping server waits for its calls to return
// after it told them to end, before it cuts the connections.
const stopGrace = 2 * time.Second

// Server is a gRPC server for cabind's socket. Register services on it
// (it is a grpc.ServiceRegistrar), then Serve.
type Server struct {
	*grpc.Server
	log *slog.Logger
	// stopping ends when Serve's context does, and with it the streams in
	// flight (an exec, an events watch).
	stopping context.Context
	stop     context.CancelFunc
	// observe, when set, is told of every call that ends.
	observe func(method, code string, took time.Duration)
}

// Observe has f told of every call that ends: its full method name, its
// status code's name and how long it took. Call it before Serve.
func (s *Server) Observe(f func(method, code string, took time.Duration)) { s.observe = f }

// New returns a server. opts come after the server's own: the relay's
// codec, interceptors and unknown-service handler go there.
func New(log *slog.Logger, opts ...grpc.ServerOption) *Server {
	stopping, stop := context.WithCancel(context.Background())
	s := &Server{log: log, stopping: stopping, stop: stop}
	s.Server = grpc.NewServer(append([]grpc.ServerOption{
		grpc.Creds(peerCreds{}),
		// Fixed windows: no BDP pings from this end. Clients are local,
		// on a unix socket; there is no bandwidth to probe.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		// Calls run on goroutines kept for the purpose, whose stacks have
		// already grown to what a call needs, not on a new one each.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		// First, so that what follows (the relay too) sees the caller and
		// is logged.
		grpc.ChainUnaryInterceptor(s.unary),
		grpc.ChainStreamInterceptor(s.stream),
	}, opts...)...)
	return s
}

// Serve serves lis until ctx ends, then stops: streams still open end with
// ErrStopping, and calls get stopGrace to return before their connections
// are cut. It returns nil after such a stop.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Server.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.stop()
	stopped := make(chan struct{})
	go func() { s.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		// A handler that does not heed its context.
		s.Server.Stop()
	}
	return nil
}

// ErrStopping is the status of a stream that cabind ended as it stopped.
var ErrStopping = errgrpc.Errorf(errdefs.ErrUnavailable, "cabind is stopping")

// unary puts the caller in the call's context and logs the call.
func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx = caller.NewContext(ctx, callerOf(ctx))
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	if !debug && s.observe == nil {
		return handler(ctx, req)
	}
	start := time.Now()
	resp, err := handler(ctx, req)
	s.ended("rpc", info.FullMethod, err, time.Since(start), debug)
	return resp, err
}

// stream puts the caller in the stream's context, logs the stream, and
// ends it when the server stops, with ErrStopping: streams such as an
// events watch or an exec never end by themselves, and their callers
// should hear why theirs did rather than see the connection drop.
func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(caller.NewContext(ss.Context(), callerOf(ss.Context())))
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	// Relayed calls come this way: nothing here costs a call more than
	// it must when not debugging.
	var start time.Time
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	if debug || s.observe != nil {
		start = time.Now()
	}
	err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
	// Whatever the handler made of its context ending (the events watch
	// returns nil), the caller hears that cabind stopped.
	if s.stopping.Err() != nil && ctx.Err() != nil {
		err = ErrStopping
	}
	if debug || s.observe != nil {
		s.ended("stream", info.FullMethod, err, time.Since(start), debug)
	}
	return err
}

// ended logs a call that ended, when debugging, and tells the observer.
func (s *Server) ended(kind, method string, err error, took time.Duration, debug bool) {
	code := errgrpc.Code(err).String()
	if debug {
		s.log.Debug(kind, "method", method, "code", code, "took", took)
	}
	if s.observe != nil {
		s.observe(method, code, took)
	}
}

// contextStream is a ServerStream with a context of its own.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// Listen opens the API socket at path, replacing a stale one but never one
// a live daemon answers on. The socket is 0660, owned by root and the
// group gid (root's when gid is negative): the group decides who may
// connect at all, and each caller then acts as itself (caller.Caller).
func Listen(path string, gid int) (net.Listener, error) {
	if len(path) > statedir.MaxSocketPath {
		return nil, fmt.Errorf("socket path %q: longer than %d bytes", path, statedir.MaxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return nil, fmt.Errorf("socket %s: another daemon is listening: %w", path, errdefs.ErrFailedPrecondition)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			lis.Close()
			return nil, fmt.Errorf("listen: give the socket to group %d: %w", gid, err)
		}
	}
	return lis, nil
}
