// Package reaper owns the reaping of child processes. As PID 1 the agent
// inherits every orphan and must wait4(-1) for them; anything else calling
// wait (exec.Cmd.Wait) would race with that. So one Reaper reaps, and hands
// each exit status to whoever started that process, or to whoever claims
// it later by pid (see Claim). A Guard keeps signals from a pid once its
// exit is in, since the pid may by then be another process's.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is how a process ended.
type Exit struct {
	Pid int
	// Code is the exit code when the process exited, else 0.
	Code int
	// Signal is the signal that killed it, else 0.
	Signal syscall.Signal
}

// ShellCode is the exit code a shell would report: Code, or 128+Signal.
func (e Exit) ShellCode() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

func (e Exit) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("pid %d killed by %v", e.Pid, e.Signal)
	}
	return fmt.Sprintf("pid %d exited with %d", e.Pid, e.Code)
}

// Reaper reaps children and delivers their exits.
type Reaper struct {
	// all is set for PID 1: reap every child, including orphans nobody
	// started. Otherwise only the processes started through Start are
	// waited for, so a Reaper can live in a test binary.
	all bool
	log *slog.Logger

	mu      sync.Mutex
	waiters map[int]chan Exit
	wake    chan os.Signal
	// kept holds the recent exits nobody waited for, oldest first (reap-all
	// mode only; see Claim).
	kept []keptExit
	now  func() time.Time
}

// New returns a Reaper; call Run to start it. reapAll is for PID 1, or a
// child subreaper that starts all its children through the Reaper.
func New(reapAll bool, log *slog.Logger) *Reaper {
	r := &Reaper{
		all:     reapAll,
		log:     log,
		waiters: map[int]chan Exit{},
		wake:    make(chan os.Signal, 1),
		now:     time.Now,
	}
	// Subscribe now, not in Run: a SIGCHLD between New and Run is kept.
	signal.Notify(r.wake, syscall.SIGCHLD)
	return r
}

// Run reaps on every SIGCHLD until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	defer signal.Stop(r.wake)
	for {
		r.reap()
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
	}
}

// StartCmd starts cmd through Start and returns its pid and the channel
// that receives its exit. cmd's Process is released, which closes the
// pidfd Go keeps (the reaper does the waiting) and makes Process.Pid read
// -1 from then on: use the pid returned, never cmd.Process.Pid. Start's
// rules hold: never call cmd.Wait, and give cmd only *os.File (or nil)
// stdio.
func (r *Reaper) StartCmd(cmd *exec.Cmd) (pid int, exits <-chan Exit, err error) {
	exits, err = r.Start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		pid = cmd.Process.Pid
		cmd.Process.Release()
		return pid, nil
	})
	if err != nil {
		return 0, nil, err
	}
	return pid, exits, nil
}

// ErrNoPid is returned by Start when start reports success without a pid.
var ErrNoPid = errors.New("reaper: started process has no pid")

// Start calls start, which must start exactly one child process and return
// its pid, and returns a channel that receives the child's exit. The child
// cannot be reaped before it is registered: start runs under the lock the
// reaping takes. Never call exec.Cmd.Wait on a child started this way, and
// give exec.Cmd only *os.File (or nil) stdio, since Wait is what would copy
// other readers and writers.
func (r *Reaper) Start(start func() (pid int, err error)) (<-chan Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, ErrNoPid
	}
	ch := make(chan Exit, 1)
	r.waiters[pid] = ch
	// The child may have exited before it was registered, and its SIGCHLD
	// been consumed by a reap that found nothing; look again.
	select {
	case r.wake <- syscall.SIGCHLD:
	default:
	}
	return ch, nil
}

// reap collects every exited child without blocking.
func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.all {
		for {
			pid, exit, ok := wait(-1)
			if !ok {
				return
			}
			r.deliver(pid, exit)
		}
	}
	for pid := range r.waiters {
		if _, exit, ok := wait(pid); ok {
			r.deliver(pid, exit)
		}
	}
}

func (r *Reaper) deliver(pid int, exit Exit) {
	ch, ok := r.waiters[pid]
	if !ok {
		r.log.Debug("reaped orphan", "exit", exit.String())
		r.keep(exit)
		return
	}
	delete(r.waiters, pid)
	ch <- exit
}

// wait reaps pid (or any child for -1) if it has exited.
func wait(pid int) (int, Exit, bool) {
	var ws unix.WaitStatus
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || got <= 0 {
			return 0, Exit{}, false
		}
		exit := Exit{Pid: got}
		switch {
		case ws.Exited():
			exit.Code = ws.ExitStatus()
		case ws.Signaled():
			exit.Signal = ws.Signal()
		default:
			// Without WUNTRACED or WCONTINUED wait4 reports only exits.
			return 0, Exit{}, false
		}
		return got, exit, true
	}
}
