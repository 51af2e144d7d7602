package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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
	r := d.run(t, strings.NewReader(input), "vm", "exec", "-i", "web", "--", "cat", "-n")
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
	r := d.run(t, nil, "--owner", "alice", "vm", "exec", "web", "ls", "-l", "--color")
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
	r := d.run(t, nil, "vm", "exec", "web", "--", "sleep", "100")
	if r.code != 130 {
		t.Errorf("exit code %d, want 130; stderr:\n%s", r.code, r.stderr)
	}
}

func TestExecTTYNeedsATerminal(t *testing.T) {
	d := startDaemon(t)
	r := d.run(t, strings.NewReader("x"), "vm", "exec", "-it", "web", "sh")
	if r.code != 1 || !strings.Contains(r.stderr, "cabin: -t needs standard input to be a terminal") {
		t.Errorf("got %+v", r)
	}
}

// resizeAndExpect resizes the terminal of ptmx to 50x120, tells this
// process so (SIGWINCH), and checks that the next message on stream is
// that resize.
func resizeAndExpect(ptmx *os.File, stream execv1.Exec_ExecServer) error {
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
	return nil
}

func TestExecTTY(t *testing.T) {
	ptmx, tty, before := openTerminal(t)

	d := startDaemon(t)
	rawDuringRun := make(chan bool, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		want := &execv1.ExecStart{Argv: []string{"sh"}, Tty: true, Stdin: true, Window: &execv1.WindowSize{Rows: 40, Cols: 100}}
		if !proto.Equal(c.start, want) {
			return status.Errorf(codes.InvalidArgument, "start = %v, want %v", c.start, want)
		}
		during, err := term.GetState(int(tty.Fd()))
		rawDuringRun <- err == nil && !reflect.DeepEqual(during, before)
		// The window changes: cabin must pass the new size on.
		if err := resizeAndExpect(ptmx, stream); err != nil {
			return err
		}
		stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: []byte("$ ")}})
		return sendExit(stream, 0)
	}
	r := d.run(t, tty, "vm", "exec", "-it", "web", "sh")
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

// With -t but not -i nothing reads the terminal, so it must keep its
// mode: in raw mode Ctrl-C would neither reach the remote process (no
// input is sent) nor raise SIGINT for cabin to forward.
func TestExecTTYWithoutStdinKeepsTerminalMode(t *testing.T) {
	ptmx, tty, before := openTerminal(t)

	d := startDaemon(t)
	unchangedDuringRun := make(chan bool, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		want := &execv1.ExecStart{Argv: []string{"sleep", "1000"}, Tty: true, Window: &execv1.WindowSize{Rows: 40, Cols: 100}}
		if !proto.Equal(c.start, want) {
			return status.Errorf(codes.InvalidArgument, "start = %v, want %v", c.start, want)
		}
		during, err := term.GetState(int(tty.Fd()))
		unchangedDuringRun <- err == nil && reflect.DeepEqual(during, before)
		// Resizes are still the remote terminal's business.
		if err := resizeAndExpect(ptmx, stream); err != nil {
			return err
		}
		return sendExit(stream, 0)
	}
	r := d.run(t, tty, "vm", "exec", "-t", "web", "--", "sleep", "1000")
	if r.code != 0 {
		t.Errorf("got %+v", r)
	}
	if !<-unchangedDuringRun {
		t.Error("-t without -i changed the terminal's mode while the command ran")
	}
}

// brokenPipeSocketEnv tells the test binary, started again by
// TestExecTTYBrokenPipeRestoresTerminal, to be cabin against that socket.
const brokenPipeSocketEnv = "CABIN_TEST_BROKEN_PIPE_SOCKET"

// TestExecTTYBrokenPipeChild is not a test: it is the cabin that
// TestExecTTYBrokenPipeRestoresTerminal runs in a process of its own, with
// its standard input a terminal and its standard output a pipe, since a
// write to a broken pipe on fd 1 may end the whole process.
func TestExecTTYBrokenPipeChild(t *testing.T) {
	socket := os.Getenv(brokenPipeSocketEnv)
	if socket == "" {
		return
	}
	os.Exit(run(context.Background(), []string{"--socket", socket, "vm", "exec", "-it", "web", "--", "yes"},
		os.Stdin, os.Stdout, os.Stderr, func(string) string { return "" }))
}

// cabin exec -it vm -- yes | head -1: once head has gone, a write to
// standard output fails with EPIPE, and cabin must still live to put the
// terminal back as it found it, then end as a process killed by SIGPIPE
// would, with status 141 and no message.
func TestExecTTYBrokenPipeRestoresTerminal(t *testing.T) {
	_, tty, before := openTerminal(t)

	d := startDaemon(t)
	d.exec.mu.Lock()
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		if _, err := recvStart(stream); err != nil {
			return err
		}
		// yes: output until the reader goes away.
		chunk := []byte(strings.Repeat("y\n", 4096))
		for stream.Context().Err() == nil {
			if err := stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: chunk}}); err != nil {
				return err
			}
		}
		return stream.Context().Err()
	}
	d.exec.mu.Unlock()

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestExecTTYBrokenPipeChild$")
	child.Env = append(os.Environ(), brokenPipeSocketEnv+"="+d.socket)
	child.Stdin = tty
	child.Stdout = pw
	var stderr syncBuffer
	child.Stderr = &stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	// head -1: read the first bytes, then go away.
	if _, err := io.ReadAtLeast(pr, make([]byte, 2), 2); err != nil {
		t.Errorf("reading cabin's output: %v", err)
	}
	pr.Close()
	err = child.Wait()
	after, stateErr := term.GetState(int(tty.Fd()))
	if stateErr != nil {
		t.Fatal(stateErr)
	}
	if !reflect.DeepEqual(after, before) {
		t.Errorf("the terminal was left in raw mode (cabin: %v)", err)
	}
	if code := child.ProcessState.ExitCode(); code != exitBrokenPipe || stderr.String() != "" {
		t.Errorf("cabin ended with %v, exit code %d and stderr %q; want exit code %d and no message",
			err, code, stderr.String(), exitBrokenPipe)
	}
}

// sentRequests is an Exec stream that only records what is sent on it.
type sentRequests struct {
	execv1.Exec_ExecClient
	sent chan *execv1.ExecRequest
}

func (s *sentRequests) Send(req *execv1.ExecRequest) error {
	s.sent <- req
	return nil
}

// SIGPIPE is caught with -it only so that cabin learns of its own broken
// output; passed on, it would kill a remote process that did nothing wrong.
func TestForwardSignalsKeepsSIGPIPE(t *testing.T) {
	stream := &sentRequests{sent: make(chan *execv1.ExecRequest, 2)}
	sigs := make(chan os.Signal, 2)
	done := make(chan struct{})
	defer close(done)
	go forwardSignals(done, sigs, &execSender{stream: stream}, nil)
	sigs <- syscall.SIGPIPE
	sigs <- syscall.SIGINT
	if req := <-stream.sent; req.GetSignal() != int32(syscall.SIGINT) {
		t.Errorf("sent %v first, want only SIGINT (%d)", req, syscall.SIGINT)
	}
}

func TestExecTTYRestoresTerminalOnError(t *testing.T) {
	_, tty, before := openTerminal(t)
	d := startDaemon(t)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		if _, err := recvStart(stream); err != nil {
			return err
		}
		return status.Error(codes.Internal, "agent lost the process")
	}
	r := d.run(t, tty, "vm", "exec", "-it", "web", "sh")
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
	r := d.run(t, nil, "vm", "exec", "web", "true")
	if r.code != 1 || r.stderr != "cabin: exec in web: VM web is not running\n" {
		t.Errorf("got %+v", r)
	}

	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		_, err := recvStart(stream)
		return err // and no exit status
	}
	r = d.run(t, nil, "vm", "exec", "web", "true")
	if r.code != 1 || r.stderr != "cabin: exec in web: the stream ended without an exit status\n" {
		t.Errorf("got %+v", r)
	}
}

// A connection lost once the command began is reported as that, not as
// a cabind that cannot be reached, though its socket is gone by then.
func TestExecConnectionLost(t *testing.T) {
	d := startDaemon(t)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		if _, err := recvStart(stream); err != nil {
			return err
		}
		if err := stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Started{Started: &execv1.ExecStarted{Pid: 42}}}); err != nil {
			return err
		}
		// cabind stopping removes its socket.
		if err := os.Remove(d.socket); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "cabind is stopping")
	}
	r := d.run(t, nil, "vm", "exec", "web", "sleep", "60")
	want := "cabin: exec in web: the connection was lost while the command ran, which stops it: cabind is stopping\n"
	if r.code != 1 || r.stderr != want {
		t.Errorf("got %+v, want code 1 and stderr %q", r, want)
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

// openTerminal opens a pseudo-terminal of 40 rows by 100 columns, closed
// when t ends, and returns its state before cabin touches it. It skips t
// where there is none.
func openTerminal(t *testing.T) (ptmx, tty *os.File, before *term.State) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptmx.Close(); tty.Close() })
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	before, err = term.GetState(int(tty.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return ptmx, tty, before
}
