package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/grpctest"
)

// agentMaitred answers as a guest would, echoing the metadata it got.
type agentMaitred struct {
	vmtools.UnimplementedMaitredServer
}

func (agentMaitred) GetKernelVersion(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.GetKernelVersionResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(MetadataVM)) > 0 {
		return nil, status.Error(codes.Internal, "routing metadata leaked to the agent")
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t"))
	return &vmtools.GetKernelVersionResponse{KernelRelease: "6.1-guest", KernelVersion: "v:" + first(md.Get("x-request"))}, nil
}

func (agentMaitred) Mount(context.Context, *vmtools.MountRequest) (*vmtools.MountResponse, error) {
	return nil, status.Error(codes.PermissionDenied, "no mounting here")
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

type health struct {
	kata.UnimplementedHealthServer
	who string
}

func (h health) Check(context.Context, *kata.CheckRequest) (*kata.HealthCheckResponse, error) {
	return &kata.HealthCheckResponse{Status: kata.HealthCheckResponse_SERVING}, nil
}

func (h health) Version(context.Context, *kata.CheckRequest) (*kata.VersionCheckResponse, error) {
	return &kata.VersionCheckResponse{AgentVersion: h.who}, nil
}

// agentExec echoes stdin back as stdout, then exits with the byte count.
type agentExec struct {
	execv1.UnimplementedExecServer
}

func (agentExec) Exec(s grpc.BidiStreamingServer[execv1.ExecRequest, execv1.ExecResponse]) error {
	n := 0
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return s.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Exit{Exit: &execv1.ExitStatus{Code: int32(n)}}})
		}
		if err != nil {
			return err
		}
		if b := req.GetStdin(); b != nil {
			n += len(b)
			if err := s.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: b}}); err != nil {
				return err
			}
		}
	}
}

func serve(t *testing.T, srv *grpc.Server) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///x",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// setup starts an "agent" server and a "daemon" server relaying to it for
// the VM named "vm1"; the daemon also serves Health itself.
func setup(t *testing.T) *grpc.ClientConn {
	agent := grpc.NewServer()
	vmtools.RegisterMaitredServer(agent, agentMaitred{})
	kata.RegisterHealthServer(agent, health{who: "agent"})
	execv1.RegisterExecServer(agent, agentExec{})
	return relayTo(t, agent)
}

// relayTo serves agent and returns a connection to a daemon relaying to
// it for the VM named "vm1".
func relayTo(t *testing.T, agent *grpc.Server) *grpc.ClientConn {
	agentConn := serve(t, agent)

	r := New(func(_ context.Context, owner, name string) (grpc.ClientConnInterface, error) {
		if name != "vm1" || owner != "" {
			return nil, fmt.Errorf("vm %q of %q: %w", name, owner, errdefs.ErrNotFound)
		}
		return agentConn, nil
	}, nil)
	daemon := grpc.NewServer(r.ServerOptions()...)
	kata.RegisterHealthServer(daemon, health{who: "daemon"})
	return serve(t, daemon)
}

func toVM(name string, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), append([]string{MetadataVM, name}, kv...)...)
}

func TestUnaryToUnknownServiceIsRelayed(t *testing.T) {
	cc := setup(t)
	var header, trailer metadata.MD
	resp, err := vmtools.NewMaitredClient(cc).GetKernelVersion(toVM("vm1", "x-request", "r"), &vmtools.EmptyMessage{},
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if resp.KernelRelease != "6.1-guest" || resp.KernelVersion != "v:r" {
		t.Errorf("response %v", resp)
	}
	if first(header.Get("x-header")) != "h" || first(trailer.Get("x-trailer")) != "t" {
		t.Errorf("header %v trailer %v not relayed", header, trailer)
	}
}

func TestAgentErrorStatusPassesThrough(t *testing.T) {
	cc := setup(t)
	_, err := vmtools.NewMaitredClient(cc).Mount(toVM("vm1"), &vmtools.MountRequest{})
	if s := status.Convert(err); s.Code() != codes.PermissionDenied || s.Message() != "no mounting here" {
		t.Errorf("error %v", err)
	}
}

func TestLocalServiceIsRelayedWhenVMNamed(t *testing.T) {
	cc := setup(t)
	client := kata.NewHealthClient(cc)
	local, err := client.Version(context.Background(), &kata.CheckRequest{})
	if err != nil || local.AgentVersion != "daemon" {
		t.Fatalf("without metadata: %v, %v", local, err)
	}
	remote, err := client.Version(toVM("vm1"), &kata.CheckRequest{})
	if err != nil || remote.AgentVersion != "agent" {
		t.Fatalf("with metadata: %v, %v", remote, err)
	}
}

func TestBidiStreamIsRelayed(t *testing.T) {
	cc := setup(t)
	stream, err := execv1.NewExecClient(cc).Exec(toVM("vm1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ab", "cde"} {
		if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: []byte(s)}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil || string(resp.GetStdout()) != s {
			t.Fatalf("echo of %q: %v, %v", s, resp, err)
		}
	}
	stream.CloseSend()
	resp, err := stream.Recv()
	if err != nil || resp.GetExit().GetCode() != 5 {
		t.Fatalf("exit: %v, %v", resp, err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after exit: %v", err)
	}
}

// agentEarlyHeader sends its headers at once, then waits for the
// caller's first message before it sends anything else.
type agentEarlyHeader struct {
	execv1.UnimplementedExecServer
}

func (agentEarlyHeader) Exec(s grpc.BidiStreamingServer[execv1.ExecRequest, execv1.ExecResponse]) error {
	if err := s.SendHeader(metadata.Pairs("x-early", "e")); err != nil {
		return err
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	return s.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Exit{Exit: &execv1.ExitStatus{}}})
}

func TestStreamHeadersRelayedBeforeFirstMessage(t *testing.T) {
	agent := grpc.NewServer()
	execv1.RegisterExecServer(agent, agentEarlyHeader{})
	cc := relayTo(t, agent)
	ctx, cancel := context.WithTimeout(toVM("vm1"), 10*time.Second)
	defer cancel()
	stream, err := execv1.NewExecClient(cc).Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The agent sends nothing more until it hears from us: the headers
	// must arrive on their own.
	md, err := stream.Header()
	if err != nil || first(md.Get("x-early")) != "e" {
		t.Fatalf("headers %v, %v", md, err)
	}
	if err := stream.Send(&execv1.ExecRequest{}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetExit() == nil {
		t.Fatalf("after the headers: %v, %v", resp, err)
	}
}

func TestUnknownVMAndUnknownService(t *testing.T) {
	cc := setup(t)
	_, err := vmtools.NewMaitredClient(cc).GetKernelVersion(toVM("nope"), &vmtools.EmptyMessage{})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown VM: %v", err)
	}
	_, err = vmtools.NewMaitredClient(cc).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("no VM named, service not served: %v", err)
	}
}

func TestIsUnary(t *testing.T) {
	for _, tc := range []struct {
		method      string
		unary, kept bool
	}{
		{"/vm_tools.Maitred/GetKernelVersion", true, true},
		{"/cabin.v1.Exec/Exec", false, true},
		// Not in the registry: relayed as streams, and not remembered, so
		// callers cannot grow the cache.
		{"/vm_tools.Maitred/NoSuchMethod", false, false},
		{"/no.such.Service/Call", false, false},
		{"no-slash", false, false},
	} {
		if got := isUnary(tc.method); got != tc.unary {
			t.Errorf("isUnary(%q) = %v, want %v", tc.method, got, tc.unary)
		}
		if _, kept := unaryMethods.Load(tc.method); kept != tc.kept {
			t.Errorf("isUnary(%q) remembered: %v, want %v", tc.method, kept, tc.kept)
		}
	}
}

// A relayed call reaches only the VMs of the owner its caller may act as:
// a user's own (whatever owner it names, none or its own), root's any.
func TestRelayActsAsTheCallersOwner(t *testing.T) {
	agentConn := serve(t, func() *grpc.Server {
		agent := grpc.NewServer()
		vmtools.RegisterMaitredServer(agent, agentMaitred{})
		return agent
	}())
	var asked []string
	r := New(func(_ context.Context, owner, name string) (grpc.ClientConnInterface, error) {
		asked = append(asked, owner)
		return agentConn, nil
	}, nil)
	cc := grpctest.Serve(t, func(*grpc.Server) {}, append(grpctest.UIDs(), r.ServerOptions()...)...)
	call := func(kv ...string) error {
		_, err := vmtools.NewMaitredClient(cc).GetKernelVersion(toVM("vm1", kv...), &vmtools.EmptyMessage{})
		return err
	}
	for _, c := range []struct {
		kv    []string
		owner string // "" with denied
		deny  bool
	}{
		{[]string{grpctest.UIDKey, "1001"}, "user-1001", false},
		{[]string{grpctest.UIDKey, "1001", MetadataOwner, "user-1001"}, "user-1001", false},
		{[]string{grpctest.UIDKey, "1001", MetadataOwner, "user-1002"}, "", true},
		{[]string{grpctest.UIDKey, "1001", MetadataOwner, ""}, "user-1001", false},
		{[]string{grpctest.UIDKey, "0", MetadataOwner, "user-1002"}, "user-1002", false},
	} {
		asked = nil
		err := call(c.kv...)
		if c.deny {
			if status.Code(err) != codes.PermissionDenied || len(asked) != 0 {
				t.Errorf("%q: %v, asked for %q; want permission denied before any VM is looked up", c.kv, err, asked)
			}
			continue
		}
		if err != nil || len(asked) != 1 || asked[0] != c.owner {
			t.Errorf("%q: %v, asked for %q; want the VM of %q", c.kv, err, asked, c.owner)
		}
	}
}
