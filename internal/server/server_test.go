package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// callerHealth reports the caller's uid as its agent version.
type callerHealth struct {
	kata.UnimplementedHealthServer
	watching chan struct{}
}

func (callerHealth) Version(ctx context.Context, _ *kata.CheckRequest) (*kata.VersionCheckResponse, error) {
	c := caller.FromContext(ctx)
	if c == nil {
		return nil, errgrpc.Errorf(errdefs.ErrInternal, "no caller")
	}
	return &kata.VersionCheckResponse{AgentVersion: strconv.FormatUint(uint64(c.UID), 10)}, nil
}

// Check blocks until its context ends, as a handler that does not heed
// a stop would.
func (h callerHealth) Check(ctx context.Context, _ *kata.CheckRequest) (*kata.HealthCheckResponse, error) {
	close(h.watching)
	<-ctx.Done()
	return &kata.HealthCheckResponse{}, nil
}

// watchDesc is a service with one server stream that waits for its
// context to end and then returns nil, as cabin.v1.Events' watch does.
var watchDesc = grpc.ServiceDesc{
	ServiceName: "test.Watch",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Watch",
		ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			if err := ss.SendHeader(nil); err != nil {
				return err
			}
			<-ss.Context().Done()
			return nil
		},
	}},
}

// serve runs a server with callerHealth on a fresh socket until the test
// ends or stop is called, and returns a client of it.
func serve(t *testing.T) (cc *grpc.ClientConn, sock string, h callerHealth, stop func() error) {
	t.Helper()
	root := statedirtest.New(t)
	sock = filepath.Join(root.Dir(), "s.sock")
	lis, err := Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(discard())
	h = callerHealth{watching: make(chan struct{})}
	kata.RegisterHealthServer(srv, h)
	srv.RegisterService(&watchDesc, struct{}{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	stop = func() error { cancel(); return <-done }
	t.Cleanup(func() { cancel() })
	cc, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, sock, h, stop
}

func TestPeerCredsIdentifyCaller(t *testing.T) {
	cc, sock, _, _ := serve(t)
	resp, err := kata.NewHealthClient(cc).Version(context.Background(), &kata.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.AgentVersion != strconv.Itoa(os.Getuid()) {
		t.Errorf("caller uid %q, want %d", resp.AgentVersion, os.Getuid())
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v, %v", st.Mode(), err)
	}
}

// A stream still open when the server stops ends with ErrStopping, whatever
// its handler returns; a unary call that does not return is cut after the
// grace period.
func TestStopEndsOpenCallsSayingSo(t *testing.T) {
	cc, _, h, stop := serve(t)
	stream, err := cc.NewStream(context.Background(), &watchDesc.Streams[0], "/test.Watch/Watch")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	unary := make(chan error, 1)
	go func() {
		_, err := kata.NewHealthClient(cc).Check(context.Background(), &kata.CheckRequest{})
		unary <- err
	}()
	<-h.watching
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve after stop = %v, want nil", err)
	}
	if took := time.Since(start); took > stopGrace+time.Second {
		t.Errorf("stop took %v, want at most the grace of %v", took, stopGrace)
	}
	var m struct{}
	err = stream.RecvMsg(&m)
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "cabind is stopping" {
		t.Errorf("stream ended with %v, want Unavailable saying cabind is stopping", err)
	}
	if err := <-unary; status.Code(err) != codes.Unavailable {
		t.Errorf("unary call ended with %v, want Unavailable", err)
	}
}

func TestListenRefusesLiveSocketReplacesStale(t *testing.T) {
	root := statedirtest.New(t)
	sock := filepath.Join(root.Dir(), "s.sock")
	live, err := Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock, -1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second listen on a live socket: %v", err)
	}
	live.Close()
	os.WriteFile(sock, nil, 0o600) // a stale leftover
	again, err := Listen(sock, -1)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	again.Close()
	if _, err := Listen("/"+strings.Repeat("x", 120), -1); err == nil {
		t.Error("accepted a socket path longer than sun_path")
	}
}

// The socket belongs to the group that may connect.
func TestListenGivesTheSocketToItsGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a socket to another group")
	}
	sock := filepath.Join(statedirtest.New(t).Dir(), "s.sock")
	lis, err := Listen(sock, 4242)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var st syscall.Stat_t
	if err := syscall.Stat(sock, &st); err != nil || st.Gid != 4242 || st.Uid != 0 || st.Mode&0o777 != 0o660 {
		t.Errorf("socket uid %d gid %d mode %o (%v), want root, 4242, 0660", st.Uid, st.Gid, st.Mode&0o777, err)
	}
}
