// Package execsvc is the guest agent's exec service, cabin.v1.Exec: it runs
// a command in the guest, streams its output to the client and the client's
// input to it, optionally on a new pseudo-terminal. Service only converts
// messages and errors; Process (process.go, pump.go, pty.go) does the work.
package execsvc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
	"github.com/cabinvm/cabin/internal/reaper"
)

// killWait bounds how long an abandoned Exec waits for its killed process
// to be reaped, and an Exec for its session's processes to go, so that a
// process stuck in the kernel cannot pin the call.
const killWait = 10 * time.Second

// Config is what the service needs.
type Config struct {
	// Reaper must be running (Run) to deliver exits.
	Reaper *reaper.Reaper
	Log    *slog.Logger
	// Moved, if not nil, is told as each Exec ends how many bytes of input
	// and output it carried (see memtrim).
	Moved func(n int64)
	// Sessions, if not nil, gives each Exec a cgroup, which its process
	// is started in and which is killed and removed when the Exec ends,
	// whatever way: everything the process started ends with it, even
	// what left its process group. Without, the end reaches the process
	// group only.
	Sessions *cgroup.Sessions
	// WaitShare, if not nil, blocks until the guest image's share is
	// mounted, or says why it is not; an Exec of a program that links
	// into it waits for it first (see linksIntoShare).
	WaitShare bootcfg.ShareWait
	// shareMount, when set, is where WaitShare's share is (tests);
	// bootcfg.RootfsMount otherwise.
	shareMount string
}

// Service serves cabin.v1.Exec.
type Service struct {
	execv1.UnimplementedExecServer
	reaper   *reaper.Reaper
	log      *slog.Logger
	moved    func(int64)
	sessions *cgroup.Sessions
	// waitShare is Config.WaitShare; shareMount where the share is.
	waitShare  bootcfg.ShareWait
	shareMount string

	// running holds the processes of the Execs in progress, for SignalAll
	// and Left.
	mu      sync.Mutex
	running map[*Process]struct{}
}

var _ execv1.ExecServer = (*Service)(nil)

// New returns the service.
func New(cfg Config) *Service {
	return &Service{reaper: cfg.Reaper, log: cfg.Log, moved: cfg.Moved, sessions: cfg.Sessions,
		waitShare: cfg.WaitShare, shareMount: cmp.Or(cfg.shareMount, shareMount), running: map[*Process]struct{}{}}
}

// SignalAll sends sig to the process of every Exec in progress and to what
// each started (its process group; with SIGKILL, its session's cgroup). It
// is how the agent ends them when it stops: SIGTERM first, so that each
// may end cleanly and its Exec report how, SIGKILL after a grace (see
// guestinit.Terminate). Their output keeps flowing.
func (s *Service) SignalAll(sig syscall.Signal) error {
	s.mu.Lock()
	procs := make([]*Process, 0, len(s.running))
	for p := range s.running {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		p.SignalGroup(sig)
	}
	return nil
}

// Left lists the pids of the Execs' processes that have not exited yet.
func (s *Service) Left() ([]int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pids []int
	for p := range s.running {
		if !p.hasExited() {
			pids = append(pids, p.Pid())
		}
	}
	return pids, nil
}

func (s *Service) track(p *Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running[p] = struct{}{}
}

func (s *Service) untrack(p *Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.running, p)
}

type execStream = grpc.BidiStreamingServer[execv1.ExecRequest, execv1.ExecResponse]

// Exec runs one process for the stream: started first, then its output,
// then its exit. If the stream ends first, the process is killed.
func (s *Service) Exec(stream execStream) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("start", "the stream ended before it"))
	}
	if err != nil {
		return err
	}
	start := req.GetStart()
	if start == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("start", "the first request must carry it"))
	}
	spec, err := specOf(start)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	if s.waitShare != nil && len(spec.Argv) > 0 && linksIntoShare(spec.Argv[0], s.shareMount) {
		if err := s.waitShare.For(stream.Context(), spec.Argv[0]); err != nil {
			return errgrpc.ToGRPC(err)
		}
	}
	sess := s.openSession()
	// Whatever way the call ends; on the way to the exit it has been done
	// already, and this does nothing.
	defer s.closeSession(sess)
	p, err := Start(s.reaper, spec, s.log, sess)
	if err != nil {
		s.log.Debug("exec failed", "argv", spec.Argv, "err", err)
		if code := startFailedCode(err); code != "" {
			stream.SetTrailer(metadata.Pairs(execv1.StartFailedTrailer, code))
		}
		return errgrpc.ToGRPC(err)
	}
	s.track(p)
	defer s.untrack(p)
	var moved atomic.Int64
	if s.moved != nil {
		defer func() { s.moved(moved.Load()) }()
	}
	s.log.Debug("exec", "pid", p.Pid(), "argv", spec.Argv, "tty", spec.TTY)
	if err := stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Started{
		Started: &execv1.ExecStarted{Pid: int32(p.Pid())},
	}}); err != nil {
		s.abandon(ctx, p)
		return err
	}

	// Requests are read on their own goroutine, so that output keeps
	// flowing while the client sends. It may outlive Exec until the
	// stream's end wakes its Recv. Stdin is written on another, since a
	// write blocks while the process does not read, and signals and
	// resizes must not wait behind it.
	stdin := newStdinQueue(p)
	stdinErr := stdin.Done()
	reqErr := make(chan error, 1)
	go func() { reqErr <- s.requests(stream, p, stdin, &moved) }()

	for out := p.Output(); out != nil; {
		select {
		case c, ok := <-out:
			if !ok {
				out = nil
				break
			}
			// Send has encoded the message when it returns (the agent's
			// server has no stats handler to keep it), so the chunk's
			// buffer is free again either way.
			err := stream.Send(outputOf(c))
			moved.Add(int64(len(c.Data)))
			c.Release()
			if err != nil {
				s.abandon(ctx, p)
				return err
			}
		case err := <-reqErr:
			if err == nil {
				reqErr = nil // the client half-closed; output goes on
				break
			}
			s.abandon(ctx, p)
			return errgrpc.ToGRPC(err)
		case err := <-stdinErr:
			if err == nil {
				stdinErr = nil // all input written and ended
				break
			}
			s.abandon(ctx, p)
			return errgrpc.ToGRPC(err)
		case <-ctx.Done():
			s.abandon(ctx, p)
			return errgrpc.ToGRPC(ctx.Err())
		}
	}
	// The output is closed only after the exit, so this does not wait.
	exit, err := p.Wait(ctx)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	// Before the exit is reported: a client that saw it sees nothing the
	// process left running.
	s.closeSession(sess)
	s.log.Debug("exec done", "exit", exit.String())
	return stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Exit{
		Exit: &execv1.ExitStatus{Code: int32(exit.ShellCode()), Signal: int32(exit.Signal)},
	}})
}

// openSession makes the cgroup of one Exec; nil without Sessions, or when
// it cannot be made: the Exec then runs as it would without, its end
// reaching its process group only. That is logged; refusing it would
// shut the VM's owner out for want of a directory.
func (s *Service) openSession() *cgroup.Session {
	if s.sessions == nil {
		return nil
	}
	sess, err := s.sessions.New()
	if err != nil {
		s.log.Warn("exec without a session of its own", "err", err)
		return nil
	}
	return sess
}

// closeSession ends what is left of the session and removes its cgroup
// (bounded: a process stuck in the kernel leaves it behind, logged).
func (s *Service) closeSession(sess *cgroup.Session) {
	if sess == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if err := sess.Close(ctx); err != nil {
		s.log.Warn("exec session not ended", "cgroup", sess.Dir(), "err", err)
	}
}

// abandon kills p and waits for it to be reaped and released, since the
// stream that would have reported it is gone.
func (s *Service) abandon(ctx context.Context, p *Process) {
	p.Kill()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
	defer cancel()
	if _, err := p.Wait(ctx); err != nil {
		s.log.Warn("killed process not reaped", "pid", p.Pid(), "err", err)
	}
}

// requests applies the client's requests after start until it half-closes
// (nil) or a request is bad or the stream fails (the error). Stdin and
// close_stdin go to the stdin queue, in order, and are written there; the
// queue is ended on return. It counts input bytes in moved.
func (s *Service) requests(stream execStream, p *Process, stdin *stdinQueue, moved *atomic.Int64) error {
	defer stdin.end()
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The client will send nothing more. For a pipe that is the
			// end of input. A terminal is left alone, as docker leaves it
			// when the client's stdin ends: a ^D the user did not type
			// could end a shell.
			if p.tty {
				return nil
			}
			return stdin.put(ctx, stdinOp{close: true})
		}
		if err != nil {
			return err
		}
		if err := apply(ctx, p, stdin, req); err != nil {
			return err
		}
		moved.Add(int64(len(req.GetStdin())))
	}
}

// apply applies one request: input is queued (and may wait for room
// there), signals and resizes take effect at once.
func apply(ctx context.Context, p *Process, stdin *stdinQueue, req *execv1.ExecRequest) error {
	switch k := req.GetKind().(type) {
	case *execv1.ExecRequest_Stdin:
		return stdin.put(ctx, stdinOp{data: k.Stdin})
	case *execv1.ExecRequest_CloseStdin:
		return stdin.put(ctx, stdinOp{close: true})
	case *execv1.ExecRequest_Resize:
		w, err := windowOf("resize", k.Resize)
		if err != nil {
			return err
		}
		return p.Resize(w)
	case *execv1.ExecRequest_Signal:
		return p.Signal(syscall.Signal(k.Signal))
	case *execv1.ExecRequest_Start:
		return errdefs.InvalidArgument("start", "sent twice")
	default:
		return errdefs.InvalidArgument("request", "empty or of an unknown kind")
	}
}

func specOf(st *execv1.ExecStart) (Spec, error) {
	spec := Spec{
		Argv:  st.GetArgv(),
		Env:   st.GetEnv(),
		Dir:   st.GetCwd(),
		User:  st.GetUser(),
		TTY:   st.GetTty(),
		Stdin: st.GetStdin(),
	}
	if spec.TTY && st.GetWindow() != nil {
		w, err := windowOf("window", st.GetWindow())
		if err != nil {
			return Spec{}, err
		}
		spec.Window = w
	}
	return spec, nil
}

func windowOf(field string, w *execv1.WindowSize) (Window, error) {
	if w.GetRows() > math.MaxUint16 || w.GetCols() > math.MaxUint16 {
		return Window{}, errdefs.InvalidArgument(field, fmt.Sprintf("%dx%d is too large", w.GetRows(), w.GetCols()))
	}
	return Window{Rows: uint16(w.GetRows()), Cols: uint16(w.GetCols())}, nil
}

func outputOf(c Chunk) *execv1.ExecResponse {
	if c.Stream == Stderr {
		return &execv1.ExecResponse{Kind: &execv1.ExecResponse_Stderr{Stderr: c.Data}}
	}
	return &execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: c.Data}}
}
