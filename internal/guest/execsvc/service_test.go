package execsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/reaper"
)

// newClient serves a real Service, with a reaper that reaps only what it
// started, over an in-memory gRPC connection.
func newClient(t *testing.T, opts ...grpc.DialOption) execv1.ExecClient {
	t.Helper()
	return newClientWith(t, Config{}, opts...)
}

// newClientWith is newClient with a Service configured as cfg, but for
// its reaper and log.
func newClientWith(t *testing.T, cfg Config, opts ...grpc.DialOption) execv1.ExecClient {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	r := reaper.New(false, log)
	ctx, cancel := context.WithCancel(context.Background())
	reaped := make(chan struct{})
	go func() { r.Run(ctx); close(reaped) }()

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	cfg.Reaper, cfg.Log = r, log
	execv1.RegisterExecServer(srv, New(cfg))
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()

	conn, err := grpc.NewClient("passthrough:///bufconn", append(opts,
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
		cancel()
		<-reaped
	})
	return execv1.NewExecClient(conn)
}

type result struct {
	pid            int32
	stdout, stderr []byte
	exit           *execv1.ExitStatus
}

func startReq(st *execv1.ExecStart) *execv1.ExecRequest {
	return &execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: st}}
}

func stdinReq(s string) *execv1.ExecRequest {
	return &execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: []byte(s)}}
}

var closeStdinReq = &execv1.ExecRequest{Kind: &execv1.ExecRequest_CloseStdin{CloseStdin: &execv1.CloseStdin{}}}

func signalReq(sig int32) *execv1.ExecRequest {
	return &execv1.ExecRequest{Kind: &execv1.ExecRequest_Signal{Signal: sig}}
}

func resizeReq(rows, cols uint32) *execv1.ExecRequest {
	return &execv1.ExecRequest{Kind: &execv1.ExecRequest_Resize{Resize: &execv1.WindowSize{Rows: rows, Cols: cols}}}
}

func sh(script string) []string { return []string{"sh", "-c", script} }

// run sends reqs, half-closes, and collects the responses.
func run(t *testing.T, c execv1.ExecClient, reqs ...*execv1.ExecRequest) (result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if err := stream.Send(r); err != nil {
			// The server ended the call; Recv reports why.
			break
		}
	}
	stream.CloseSend()
	return collect(t, stream, false)
}

// collect reads the rest of the stream, checking that started comes first
// (unless the caller already read it) and exit last, and returns the call's
// error, if any.
func collect(t *testing.T, stream grpc.BidiStreamingClient[execv1.ExecRequest, execv1.ExecResponse], startedRead bool) (result, error) {
	t.Helper()
	var res result
	var stdout, stderr bytes.Buffer
	for first := !startedRead; ; first = false {
		resp, err := stream.Recv()
		res.stdout, res.stderr = stdout.Bytes(), stderr.Bytes()
		if errors.Is(err, io.EOF) {
			if res.exit == nil {
				t.Error("stream ended without exit")
			}
			return res, nil
		}
		if err != nil {
			return res, err
		}
		if res.exit != nil {
			t.Errorf("%v after exit", resp)
		}
		if _, ok := resp.Kind.(*execv1.ExecResponse_Started); ok != first {
			t.Errorf("started first: got %v (first: %v)", resp, first)
		}
		switch k := resp.Kind.(type) {
		case *execv1.ExecResponse_Started:
			res.pid = k.Started.Pid
		case *execv1.ExecResponse_Stdout:
			if len(k.Stdout) > chunkSize {
				t.Errorf("stdout message of %d bytes", len(k.Stdout))
			}
			stdout.Write(k.Stdout)
		case *execv1.ExecResponse_Stderr:
			stderr.Write(k.Stderr)
		case *execv1.ExecResponse_Exit:
			res.exit = k.Exit
		}
	}
}

func mustRun(t *testing.T, c execv1.ExecClient, reqs ...*execv1.ExecRequest) result {
	t.Helper()
	res, err := run(t, c, reqs...)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	return res
}

func wantExit(t *testing.T, res result, code, sig int32) {
	t.Helper()
	if res.exit.GetCode() != code || res.exit.GetSignal() != sig {
		t.Errorf("exit %v, want code %d signal %d", res.exit, code, sig)
	}
}

func TestOutputAndExitCode(t *testing.T) {
	c := newClient(t)
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: sh("echo hi; echo err >&2; exit 3")}))
	if string(res.stdout) != "hi\n" || string(res.stderr) != "err\n" {
		t.Errorf("stdout %q stderr %q", res.stdout, res.stderr)
	}
	if res.pid <= 0 {
		t.Errorf("pid %d", res.pid)
	}
	wantExit(t, res, 3, 0)
}

func TestEnvAndCwd(t *testing.T) {
	c := newClient(t)
	res := mustRun(t, c, startReq(&execv1.ExecStart{
		Argv: sh(`echo "$CABIN_A $CABIN_B"; pwd; [ -t 1 ] || echo notty`),
		Env:  map[string]string{"CABIN_A": "a", "CABIN_B": "b=c"},
		Cwd:  "/tmp",
	}))
	if want := "a b=c\n/tmp\nnotty\n"; string(res.stdout) != want {
		t.Errorf("stdout %q, want %q", res.stdout, want)
	}
	res = mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"pwd"}}))
	if string(res.stdout) != "/\n" {
		t.Errorf("default cwd: %q", res.stdout)
	}
	// A relative path with a slash is taken from cwd, as a shell would.
	res = mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"./sh", "-c", "exit 4"}, Cwd: "/bin"}))
	wantExit(t, res, 4, 0)
}

func TestLargeOutput(t *testing.T) {
	c := newClient(t)
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			const n = 5_000_000
			res := mustRun(t, c, startReq(&execv1.ExecStart{
				Argv: []string{"head", "-c", strconv.Itoa(n), "/dev/zero"},
				Tty:  tty,
			}))
			if len(res.stdout) != n || bytes.IndexFunc(res.stdout, func(r rune) bool { return r != 0 }) >= 0 {
				t.Errorf("got %d bytes of stdout, want %d zero bytes", len(res.stdout), n)
			}
			wantExit(t, res, 0, 0)
		})
	}
}

func TestStdin(t *testing.T) {
	c := newClient(t)
	t.Run("close_stdin", func(t *testing.T) {
		res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat"}, Stdin: true}),
			stdinReq("hello\n"), stdinReq("world"), closeStdinReq)
		if string(res.stdout) != "hello\nworld" {
			t.Errorf("stdout %q", res.stdout)
		}
		wantExit(t, res, 0, 0)
	})
	t.Run("half-close", func(t *testing.T) {
		// run half-closes after the requests; that alone ends stdin.
		res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat"}, Stdin: true}), stdinReq("abc"))
		if string(res.stdout) != "abc" {
			t.Errorf("stdout %q", res.stdout)
		}
	})
	t.Run("not attached", func(t *testing.T) {
		res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat"}}))
		if len(res.stdout) != 0 {
			t.Errorf("stdout %q", res.stdout)
		}
		wantExit(t, res, 0, 0)
	})
	t.Run("large both ways", func(t *testing.T) {
		// More than the pipes hold each way: it only completes if input
		// and output flow at the same time.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := c.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Random bytes, so that a buffer reused too early or chunks out of
		// order cannot go unnoticed.
		in := make([]byte, 2<<20)
		r := rand.New(rand.NewPCG(3, 4))
		for i := range in {
			in[i] = byte(r.UintN(256))
		}
		go func() {
			stream.Send(startReq(&execv1.ExecStart{Argv: []string{"cat"}, Stdin: true}))
			for b := in; len(b) > 0; b = b[min(len(b), 50_000):] {
				if stream.Send(stdinReq(string(b[:min(len(b), 50_000)]))) != nil {
					return
				}
			}
			stream.CloseSend()
		}()
		res, err := collect(t, stream, false)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.stdout, in) {
			t.Errorf("got %d bytes back, want the %d sent", len(res.stdout), len(in))
		}
	})
}

func TestReportsBytesMoved(t *testing.T) {
	reports := make(chan int64, 1)
	c := newClientWith(t, Config{Moved: func(n int64) { reports <- n }})
	in := strings.Repeat("x", 100_000)
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"sh", "-c", "cat; printf 12345 >&2"}, Stdin: true}),
		stdinReq(in[:60_000]), stdinReq(in[60_000:]), closeStdinReq)
	wantExit(t, res, 0, 0)
	select {
	case n := <-reports:
		// In, out, and five bytes of stderr.
		if want := int64(2*len(in) + 5); n != want {
			t.Errorf("reported %d bytes moved, want %d", n, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the end of the Exec was not reported")
	}
}

func TestTTY(t *testing.T) {
	c := newClient(t)
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"tty"}, Tty: true, Stdin: true}))
	if !regexp.MustCompile(`^/dev/pts/[0-9]+\r\n$`).Match(res.stdout) {
		t.Errorf("tty printed %q", res.stdout)
	}
	wantExit(t, res, 0, 0)

	// Without stdin forwarded the terminal is still the process's stdin,
	// as with docker's -t: tty works, and nothing is typed into it.
	res = mustRun(t, c, startReq(&execv1.ExecStart{
		Argv: sh(`echo $TERM; echo err >&2; [ -t 0 ] && echo stdin-is-a-tty; tty`),
		Tty:  true,
	}))
	if want := regexp.MustCompile(`^xterm-256color\r\nerr\r\nstdin-is-a-tty\r\n/dev/pts/[0-9]+\r\n$`); !want.Match(res.stdout) || len(res.stderr) != 0 {
		t.Errorf("stdout %q stderr %q, want stdout %q", res.stdout, res.stderr, want)
	}

	res = mustRun(t, c, startReq(&execv1.ExecStart{Argv: sh(`echo $TERM`), Tty: true, Env: map[string]string{"TERM": "vt100"}}))
	if string(res.stdout) != "vt100\r\n" {
		t.Errorf("client's TERM: %q", res.stdout)
	}
}

// TestTTYCloseStdin: close_stdin on a terminal is ^D, which ends cat's
// input at the start of a line.
func TestTTYCloseStdin(t *testing.T) {
	c := newClient(t)
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat"}, Tty: true, Stdin: true}),
		stdinReq("hi\n"), closeStdinReq)
	// The terminal echoes the line, then cat writes it.
	if string(res.stdout) != "hi\r\nhi\r\n" {
		t.Errorf("stdout %q", res.stdout)
	}
	wantExit(t, res, 0, 0)
}

func TestTTYWindow(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(startReq(&execv1.ExecStart{
		Argv:   sh("stty size; read x; stty size"),
		Tty:    true,
		Stdin:  true,
		Window: &execv1.WindowSize{Rows: 24, Cols: 80},
	}))
	var out []byte
	for !bytes.Contains(out, []byte("\n")) {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("before the first size: %v (output %q)", err, out)
		}
		out = append(out, resp.GetStdout()...)
	}
	if string(out) != "24 80\r\n" {
		t.Errorf("initial size: %q", out)
	}
	stream.Send(resizeReq(40, 100))
	stream.Send(stdinReq("\n"))
	stream.CloseSend()
	res, err := collect(t, stream, true)
	if err != nil {
		t.Fatal(err)
	}
	// The echoed newline, then the new size.
	if string(res.stdout) != "\r\n40 100\r\n" {
		t.Errorf("after resize: %q", res.stdout)
	}
}

func TestSignal(t *testing.T) {
	c := newClient(t)
	for _, tty := range []bool{false, true} {
		// With a tty the signal goes to the group sleep leads.
		res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}, Tty: tty}), signalReq(15))
		wantExit(t, res, 143, 15)
	}
}

// TestSignalNotBehindStdin sends a process that does not read more stdin
// than its pipe holds, then a signal: the signal must take effect at once,
// not once the process reads its input or exits.
func TestSignalNotBehindStdin(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(startReq(&execv1.ExecStart{Argv: []string{"sleep", "8"}, Stdin: true})); err != nil {
		t.Fatal(err)
	}
	in := make([]byte, 1<<20)
	for chunk := range slices.Chunk(in, execv1.MaxChunk) {
		if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: chunk}}); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now()
	if err := stream.Send(signalReq(15)); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	res, err := collect(t, stream, false)
	if err != nil {
		t.Fatal(err)
	}
	wantExit(t, res, 143, 15)
	if d := time.Since(sent); d > 2*time.Second {
		t.Errorf("the signal took effect after %v", d.Round(time.Millisecond))
	}
}

// TestNoOutputLost runs processes that write just before they exit, which
// loses output if the drain ends at the exit (pipes) or on the first EIO
// (a terminal whose slave the child closed).
func TestNoOutputLost(t *testing.T) {
	c := newClient(t)
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			for i := range 50 {
				res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"printf", "x"}, Tty: tty}))
				if string(res.stdout) != "x" {
					t.Fatalf("run %d: stdout %q", i, res.stdout)
				}
			}
		})
	}
}

// TestBackgroundHoldsOutput: a descendant keeping the pipes open must not
// hold back the exit for long.
func TestBackgroundHoldsOutput(t *testing.T) {
	c := newClient(t)
	begin := time.Now()
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: sh("sleep 5 & echo done")}))
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("exit took %v", d)
	}
	if string(res.stdout) != "done\n" {
		t.Errorf("stdout %q", res.stdout)
	}
	wantExit(t, res, 0, 0)
}

// TestSlowClientAfterExit: with a descendant holding the pipe, the drain
// after the exit must still deliver all the process wrote, to a client that
// takes longer than drainGrace over each message.
func TestSlowClientAfterExit(t *testing.T) {
	// A fixed window (no BDP growth) keeps gRPC from absorbing the output,
	// so the client's slowness reaches back to the pipe: head exits with
	// the pipe full (64 KiB), and with about as much again in the pump,
	// the service and gRPC.
	c := newClient(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n, slowTail = 1_000_000, 256 << 10
	stream.Send(startReq(&execv1.ExecStart{Argv: sh(fmt.Sprintf("sleep 3 & head -c %d /dev/zero", n))}))
	stream.CloseSend()
	var got int
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		if resp.GetExit() != nil {
			break
		}
		got += len(resp.GetStdout())
		if got > n-slowTail {
			time.Sleep(drainGrace + 50*time.Millisecond)
		}
	}
	if got != n {
		t.Errorf("got %d bytes, want %d", got, n)
	}
}

func TestBadRequests(t *testing.T) {
	c := newClient(t)
	file, err := os.CreateTemp("", "x")
	if err != nil {
		t.Fatal(err)
	}
	file.Close()
	defer os.Remove(file.Name())
	tests := []struct {
		name string
		reqs []*execv1.ExecRequest
		code codes.Code
		msg  string
	}{
		{"no start", []*execv1.ExecRequest{stdinReq("x")}, codes.InvalidArgument, "start"},
		{"nothing", nil, codes.InvalidArgument, "start"},
		{"empty argv", []*execv1.ExecRequest{startReq(&execv1.ExecStart{})}, codes.InvalidArgument, "argv"},
		{"relative cwd", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"true"}, Cwd: "tmp"})}, codes.InvalidArgument, "cwd"},
		{"bad env", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"true"}, Env: map[string]string{"A=B": "c"}})}, codes.InvalidArgument, "env"},
		{"missing binary", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"/nonexistent/cabin-test"}})}, codes.NotFound, "/nonexistent/cabin-test"},
		{"not in PATH", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"cabin-no-such-command"}})}, codes.NotFound, "cabin-no-such-command"},
		{"not executable", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{file.Name()}})}, codes.FailedPrecondition, file.Name()},
		{"missing cwd", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"true"}, Cwd: "/nonexistent"})}, codes.NotFound, "/nonexistent"},
		{"cwd not a directory", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"true"}, Cwd: file.Name()})}, codes.FailedPrecondition, "not a directory"},
		{"huge window", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"true"}, Tty: true, Window: &execv1.WindowSize{Rows: 1 << 20}})}, codes.InvalidArgument, "window"},
		{"stdin not attached", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}}), stdinReq("x")}, codes.InvalidArgument, "stdin"},
		{"resize without tty", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}}), resizeReq(1, 1)}, codes.InvalidArgument, "resize"},
		{"signal 0", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}}), signalReq(0)}, codes.InvalidArgument, "signal"},
		{"signal 65", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}}), signalReq(65)}, codes.InvalidArgument, "signal"},
		{"start twice", []*execv1.ExecRequest{startReq(&execv1.ExecStart{Argv: []string{"sleep", "100"}}), startReq(&execv1.ExecStart{Argv: []string{"true"}})}, codes.InvalidArgument, "start"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := run(t, c, tt.reqs...)
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("got %v, want %v naming %q", err, tt.code, tt.msg)
			}
			// A bad request after start ends the call: the process must
			// not outlive it.
			if res.pid > 0 {
				waitGone(t, int(res.pid), true)
			}
		})
	}
}

// TestCancelReleasesEverything cancels calls in each state a process can
// be in, and checks that the processes are killed and reaped, and that no
// descriptor or goroutine is left behind.
func TestCancelReleasesEverything(t *testing.T) {
	c := newClient(t)
	// Warm up: the first exec opens what the process keeps for good (the
	// poller, Go's pidfd probe).
	mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"true"}}))
	mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"true"}, Tty: true, Stdin: true}))
	fds, goroutines := countFDs(t), runtime.NumGoroutine()

	tests := []struct {
		name  string
		start *execv1.ExecStart
		reqs  []*execv1.ExecRequest
		// child reads a descendant's pid from the first line of output.
		child bool
	}{
		{"pipes with a descendant", &execv1.ExecStart{Argv: sh("sleep 100 & echo $!; wait")}, nil, true},
		{"tty with a descendant", &execv1.ExecStart{Argv: sh("sleep 100 & echo $!; wait"), Tty: true, Stdin: true}, nil, true},
		{"output not read", &execv1.ExecStart{Argv: []string{"yes"}}, nil, false},
		{"tty output not read", &execv1.ExecStart{Argv: []string{"yes"}, Tty: true}, nil, false},
		{"stdin not read", &execv1.ExecStart{Argv: []string{"sleep", "100"}, Stdin: true},
			[]*execv1.ExecRequest{stdinReq(strings.Repeat("x", 1<<20))}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := c.Exec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(startReq(tt.start)); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			pid := int(resp.GetStarted().GetPid())
			var sent sync.WaitGroup
			sent.Go(func() {
				for _, r := range tt.reqs {
					stream.Send(r)
				}
			})
			child := 0
			if tt.child {
				var out []byte
				for !bytes.Contains(out, []byte("\n")) {
					resp, err := stream.Recv()
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, resp.GetStdout()...)
				}
				if child, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
					t.Fatalf("child pid: %v", err)
				}
			}
			time.Sleep(100 * time.Millisecond) // let output and input back up
			cancel()
			sent.Wait()
			waitGone(t, pid, true)
			if child > 0 {
				// An orphan: its reaping is up to this system's init.
				waitGone(t, child, false)
			}
		})
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		nf, ng := countFDs(t), runtime.NumGoroutine()
		if nf <= fds && ng <= goroutines {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("fds %d → %d, goroutines %d → %d\n%s", fds, nf, goroutines, ng, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// waitGone waits until pid no longer exists; unless reaped is set, a
// zombie counts as gone.
func waitGone(t *testing.T, pid int, reaped bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid, reaped) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still exists", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func gone(pid int, reaped bool) bool {
	if errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
		return true
	}
	if reaped {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which ends with the last ")".
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
