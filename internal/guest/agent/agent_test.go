package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/reaper"
	"github.com/cabinvm/cabin/internal/version"
)

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startupListener is the host's StartupListener: it records VmReady calls
// and fails the first failFirst of them.
type startupListener struct {
	vmtools.UnimplementedStartupListenerServer
	failFirst int32
	calls     atomic.Int32
	ready     chan struct{}
}

func (l *startupListener) VmReady(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	if n := l.calls.Add(1); n <= l.failFirst {
		return nil, status.Error(codes.Unavailable, "host not ready yet")
	}
	l.ready <- struct{}{}
	return &vmtools.EmptyMessage{}, nil
}

// host is the host end of one session with the agent.
type host struct {
	sess     *channel.Session
	listener *startupListener
	conn     *channel.Client
}

// connect dials the agent's socket as cabind dials a VM's port: a session,
// StartupListener served on the streams the guest opens, and a gRPC client
// over streams the host opens.
func connect(t *testing.T, socket string, failFirst int32) *host {
	t.Helper()
	sess, err := channel.DialSocket(socket, testLog())
	if err != nil {
		t.Fatal(err)
	}
	h := &host{sess: sess, listener: &startupListener{failFirst: failFirst, ready: make(chan struct{}, 4)}}
	srv := channel.NewServer(testLog())
	vmtools.RegisterStartupListenerServer(srv, h.listener)
	go srv.Serve(sess)
	h.conn, err = channel.Dial(sess, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.conn.Close()
		srv.Stop()
		sess.Close()
	})
	return h
}

func (h *host) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-h.listener.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("no VmReady from the agent")
	}
}

type running struct {
	socket  string
	cancel  context.CancelFunc
	done    chan error
	readies *atomic.Int32
}

// startAgent runs the agent on a unix socket in this process. Shutdown
// stops it, as in the agent's --listen mode.
func startAgent(t *testing.T) *running {
	t.Helper()
	r := reaper.New(false, testLog())
	rctx, rcancel := context.WithCancel(context.Background())
	go r.Run(rctx)
	t.Cleanup(rcancel)

	socket := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var readies atomic.Int32
	a := New(Config{
		Log:      testLog(),
		Reaper:   r,
		PowerOff: cancel,
		OnReady:  func() { readies.Add(1) },
	})
	run := &running{socket: socket, cancel: cancel, done: make(chan error, 1), readies: &readies}
	go func() {
		run.done <- a.ServeListener(ctx, l)
		a.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-run.done:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return run
}

func TestAgentEndToEnd(t *testing.T) {
	agent := startAgent(t)
	h := connect(t, agent.socket, 0)
	h.waitReady(t)
	ctx := context.Background()

	kv, err := vmtools.NewMaitredClient(h.conn).GetKernelVersion(ctx, &vmtools.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	unix.Uname(&u)
	if kv.KernelRelease != unix.ByteSliceToString(u.Release[:]) || kv.KernelVersion != unix.ByteSliceToString(u.Version[:]) {
		t.Fatalf("GetKernelVersion = %v", kv)
	}

	health := kata.NewHealthClient(h.conn)
	check, err := health.Check(ctx, &kata.CheckRequest{})
	if err != nil || check.Status != kata.HealthCheckResponse_SERVING {
		t.Fatalf("Check = %v, %v", check, err)
	}
	v, err := health.Version(ctx, &kata.CheckRequest{})
	if err != nil || v.AgentVersion != version.Version || v.GrpcVersion != grpc.Version {
		t.Fatalf("Version = %v, %v", v, err)
	}

	// Errors keep their category across the wire.
	_, err = vmtools.NewMaitredClient(h.conn).LaunchProcess(ctx, &vmtools.LaunchProcessRequest{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "argv") {
		t.Fatalf("empty LaunchProcess: %v", err)
	}
	if n := h.listener.calls.Load(); n != 1 {
		t.Fatalf("%d VmReady calls on one session, want 1", n)
	}
	// OnReady follows the VmReady reply.
	deadline := time.Now().Add(5 * time.Second)
	for agent.readies.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := agent.readies.Load(); n != 1 {
		t.Fatalf("OnReady called %d times, want 1", n)
	}
}

// TestVmReadyEverySession: each new session, as after a host restart, gets
// its own VmReady; a VmReady that fails is retried.
func TestVmReadyEverySession(t *testing.T) {
	agent := startAgent(t)
	first := connect(t, agent.socket, 0)
	first.waitReady(t)
	first.sess.Close() // the host goes away

	second := connect(t, agent.socket, 2)
	second.waitReady(t)
	if n := second.listener.calls.Load(); n != 3 {
		t.Fatalf("%d VmReady calls, want 2 failures and a success", n)
	}
	check, err := kata.NewHealthClient(second.conn).Check(context.Background(), &kata.CheckRequest{})
	if err != nil || check.Status != kata.HealthCheckResponse_SERVING {
		t.Fatalf("Check on the new session = %v, %v", check, err)
	}
	if n := agent.readies.Load(); n != 1 {
		t.Fatalf("OnReady called %d times, want once for the agent's life", n)
	}
}

// TestShutdownReplies: Shutdown answers before the agent stops, and the
// agent then stops serving.
func TestShutdownReplies(t *testing.T) {
	agent := startAgent(t)
	h := connect(t, agent.socket, 0)
	h.waitReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := vmtools.NewMaitredClient(h.conn).Shutdown(ctx, &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-agent.done:
		if err != nil {
			t.Fatalf("agent stopped with %v", err)
		}
		agent.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("agent still serving after Shutdown")
	}
	if _, err := channel.DialSocket(agent.socket, testLog()); err == nil {
		t.Fatal("agent still accepts connections after Shutdown")
	}
}

// TestShutdownTermsExecs: Shutdown gives a process under an open Exec
// SIGTERM, and time to act on it, before anything kills it; its Exec then
// reports how it ended.
func TestShutdownTermsExecs(t *testing.T) {
	agent := startAgent(t)
	h := connect(t, agent.socket, 0)
	h.waitReady(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	marker := filepath.Join(t.TempDir(), "termed")
	stream, err := execv1.NewExecClient(h.conn).Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: &execv1.ExecStart{
		Argv: []string{"sh", "-c", `trap 'echo > "$1"; exit 0' TERM; echo trapped; while :; do sleep .05; done`, "sh", marker},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// Shutdown only once the trap is set.
	for out := ""; !strings.Contains(out, "trapped"); {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("before the trap was set: %v", err)
		}
		out += string(resp.GetStdout())
	}

	if _, err := vmtools.NewMaitredClient(h.conn).Shutdown(ctx, &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	var exit *execv1.ExitStatus
	for exit == nil {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Exec ended without an exit: %v", err)
		}
		exit = resp.GetExit()
	}
	if exit.GetCode() != 0 || exit.GetSignal() != 0 {
		t.Errorf("exit %v, want 0 from the TERM trap", exit)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the TERM trap did not run: %v", err)
	}
}
