package main

import (
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

// execCall is what the fake agent saw of one Exec.
type execCall struct {
	md    metadata.MD
	start *execv1.ExecStart
	stdin []byte
}

// recvStart reads the first message, which must be start.
func recvStart(stream execv1.Exec_ExecServer) (*execCall, error) {
	req, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if req.GetStart() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "first message is %T, want start", req.GetKind())
	}
	md, _ := metadata.FromIncomingContext(stream.Context())
	return &execCall{md: md, start: req.GetStart()}, nil
}

func sendExit(stream execv1.Exec_ExecServer, code int32) error {
	return stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Exit{Exit: &execv1.ExitStatus{Code: code}}})
}

func TestExecStdinOutputAndExitCode(t *testing.T) {
	d := startDaemon(t)
	calls := make(chan *execCall, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		// Read stdin to its end, as cat would.
		for {
			req, err := stream.Recv()
			if err != nil {
				return err
			}
			if req.GetCloseStdin() != nil {
				break
			}
			c.stdin = append(c.stdin, req.GetStdin()...)
		}
		calls <- c
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Started{Started: &execv1.ExecStarted{Pid: 9}}})
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: append([]byte("got: "), c.stdin...)}})
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stderr{Stderr: []byte("warning\n")}})
		return sendExit(stream, 3)
	}
	// More than one read's worth of input, to see it arrive whole.
	input := strings.Repeat("hello\n", 10000)
	r := d.run(t, strings.NewReader(input), "exec", "-i", "web", "--", "cat", "-n")
	if r.code != 3 {
		t.Errorf("exit code %d, want the remote 3; stderr:\n%s", r.code, r.stderr)
	}
	if r.stdout != "got: "+input {
		t.Errorf("stdout has %d bytes, want %d", len(r.stdout), len("got: "+input))
	}
	if r.stderr != "warning\n" {
		t.Errorf("stderr = %q, want only the remote's", r.stderr)
	}
	c := <-calls
	if got := c.md.Get("cabin-vm"); !slices.Equal(got, []string{"web"}) {
		t.Errorf("metadata cabin-vm = %q, want [web]", got)
	}
	if got := c.md.Get("cabin-owner"); len(got) != 0 {
		t.Errorf("metadata cabin-owner = %q without --owner", got)
	}
	want := &execv1.ExecStart{Argv: []string{"cat", "-n"}, Stdin: true}
	if !proto.Equal(c.start, want) {
		t.Errorf("start = %v, want %v", c.start, want)
	}
}

func TestExecOwnerAndArgvWithoutDashes(t *testing.T) {
	d := startDaemon(t)
	calls := make(chan *execCall, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		calls <- c
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: []byte("total 0\n")}})
		return sendExit(stream, 0)
	}
	r := d.run(t, nil, "--owner", "alice", "exec", "web", "ls", "-l", "--color")
	if r.code != 0 || r.stdout != "total 0\n" {
		t.Errorf("got %+v", r)
	}
	c := <-calls
	if got := c.md.Get("cabin-owner"); !slices.Equal(got, []string{"alice"}) {
		t.Errorf("metadata cabin-owner = %q, want [alice]", got)
	}
	want := &execv1.ExecStart{Argv: []string{"ls", "-l", "--color"}}
	if !proto.Equal(c.start, want) {
		t.Errorf("start = %v, want %v", c.start, want)
	}
}

func TestExecForwardsSignals(t *testing.T) {
	d := startDaemon(t)
	gotStart := make(chan struct{})
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		if _, err := recvStart(stream); err != nil {
			return err
		}
		close(gotStart)
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if req.GetSignal() != int32(syscall.SIGINT) {
			return status.Errorf(codes.InvalidArgument, "got %v, want signal %d", req, syscall.SIGINT)
		}
		return sendExit(stream, 128+int32(syscall.SIGINT))
	}
	go func() {
		<-gotStart
		// cabin catches SIGINT from before it sends start, so this does
		// not end the test binary.
		syscall.Kill(syscall.Getpid(), syscall.SIGINT)
	}()
	r := d.run(t, nil, "exec", "web", "--", "sleep", "100")
	if r.code != 130 {
		t.Errorf("exit code %d, want 130; stderr:\n%s", r.code, r.stderr)
	}
}

func TestExecTTYNeedsATerminal(t *testing.T) {
	d := startDaemon(t)
	r := d.run(t, strings.NewReader("x"), "exec", "-it", "web", "sh")
	if r.code != 1 || !strings.Contains(r.stderr, "cabin: -t needs standard input to be a terminal") {
		t.Errorf("got %+v", r)
	}
}

func TestExecTTY(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	before, err := term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t)
	rawDuringRun := make(chan bool, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		want := &execv1.ExecStart{Argv: []string{"sh"}, Tty: true, Window: &execv1.WindowSize{Rows: 40, Cols: 100}}
		if !proto.Equal(c.start, want) {
			return status.Errorf(codes.InvalidArgument, "start = %v, want %v", c.start, want)
		}
		during, err := term.GetState(int(tty.Fd()))
		rawDuringRun <- err == nil && !reflect.DeepEqual(during, before)
		// The window changes: cabin must pass the new size on.
		if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 50, Cols: 120}); err != nil {
			return err
		}
		syscall.Kill(syscall.Getpid(), syscall.SIGWINCH)
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if got, want := req.GetResize(), (&execv1.WindowSize{Rows: 50, Cols: 120}); !proto.Equal(got, want) {
			return status.Errorf(codes.InvalidArgument, "got %v, want resize %v", req, want)
		}
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: []byte("$ ")}})
		return sendExit(stream, 0)
	}
	r := d.run(t, tty, "exec", "-t", "web", "sh")
	if r.code != 0 || r.stdout != "$ " {
		t.Errorf("got %+v", r)
	}
	if !<-rawDuringRun {
		t.Error("the terminal was not in raw mode while the command ran")
	}
	after, err := term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after, before) {
		t.Error("the terminal's mode was not restored")
	}
}

func TestExecTTYRestoresTerminalOnError(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	before, err := term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		if _, err := recvStart(stream); err != nil {
			return err
		}
		return status.Error(codes.Internal, "agent lost the process")
	}
	r := d.run(t, tty, "exec", "-t", "web", "sh")
	if r.code != 1 || r.stderr != "cabin: exec in web: agent lost the process\n" {
		t.Errorf("got %+v", r)
	}
	if after, _ := term.GetState(int(tty.Fd())); !reflect.DeepEqual(after, before) {
		t.Error("the terminal's mode was not restored after an error")
	}
}

func TestExecDaemonErrors(t *testing.T) {
	d := startDaemon(t)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		md, _ := metadata.FromIncomingContext(stream.Context())
		return status.Errorf(codes.FailedPrecondition, "VM %s is not running", md.Get("cabin-vm")[0])
	}
	r := d.run(t, nil, "exec", "web", "true")
	if r.code != 1 || r.stderr != "cabin: exec in web: VM web is not running\n" {
		t.Errorf("got %+v", r)
	}

	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		_, err := recvStart(stream)
		return err // and no exit status
	}
	r = d.run(t, nil, "exec", "web", "true")
	if r.code != 1 || r.stderr != "cabin: exec in web: the stream ended without an exit status\n" {
		t.Errorf("got %+v", r)
	}
}

func TestExecArgv(t *testing.T) {
	for _, tc := range []struct {
		args, want []string
	}{
		{[]string{"web", "ls"}, []string{"ls"}},
		{[]string{"web", "--", "ls", "-l"}, []string{"ls", "-l"}},
		{[]string{"web", "--", "--", "x"}, []string{"--", "x"}},
		{[]string{"web", "--"}, []string{}},
		{[]string{"web"}, []string{}},
	} {
		if got := execArgv(tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("execArgv(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		st   *execv1.ExitStatus
		want int
	}{
		{&execv1.ExitStatus{}, 0},
		{&execv1.ExitStatus{Code: 3}, 3},
		{&execv1.ExitStatus{Code: 137, Signal: 9}, 137},
		{&execv1.ExitStatus{Signal: 15}, 143},
		{&execv1.ExitStatus{Code: 256}, 255},
		{&execv1.ExitStatus{Code: -1}, 255},
	} {
		if got := exitCode(tc.st); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.st, got, tc.want)
		}
	}
}
