package reaper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// errRefused is why Kill and KillGroup refuse a pid.
var errRefused = errors.New("not a process the agent may signal")

// Guard keeps whatever is meant for a process (signals, a terminal's
// resize, the closing of its terminal's slave) from acting once the
// reaper has reaped it: from then on its pid may be another process's.
//
// A check of the pid itself (kill(pid, 0), /proc) cannot tell the
// process from one that took its pid over. What tells them apart is the
// exit the reaper hands out: Watch records it under the lock every
// guarded action holds, so an action runs either before the exit is
// recorded, and reaches the process (or its zombie), or after, and is
// dropped. The reaper delivers an exit as soon as it has reaped it, and
// the kernel hands pids out in turn, so the pid is not reused in that
// moment between the reap and the recording.
type Guard struct {
	pid  int
	done chan struct{} // closed once exit is set

	// mu orders the guarded actions against the recording of the exit.
	mu   sync.Mutex
	exit Exit
}

// NewGuard returns a guard for pid; call Watch with its exits.
func NewGuard(pid int) *Guard {
	return &Guard{pid: pid, done: make(chan struct{})}
}

// Pid is the process's pid.
func (g *Guard) Pid() int { return g.pid }

// Watch waits for the exit on exits, the channel the reaper gave for
// g's pid, records it, and returns it. onExit, if not nil, runs with the
// exit while the lock is still held: what it releases (a terminal's
// slave, pipes) cannot be raced by an action that still saw the process
// running. Call Watch once; it blocks until the exit comes.
func (g *Guard) Watch(exits <-chan Exit, onExit func(Exit)) Exit {
	e := <-exits
	g.mu.Lock()
	defer g.mu.Unlock()
	g.exit = e
	close(g.done)
	if onExit != nil {
		onExit(e)
	}
	return e
}

// Done is closed once the exit is recorded.
func (g *Guard) Done() <-chan struct{} { return g.done }

// Exited tells whether the exit is recorded. It does not take the lock:
// an answer of false may be stale by the time it is read, so act on it
// only through Do or Locked.
func (g *Guard) Exited() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// Exit returns the exit once it is recorded; ok is false before.
func (g *Guard) Exit() (e Exit, ok bool) {
	select {
	case <-g.done:
		return g.exit, true
	default:
		return Exit{}, false
	}
}

// Wait waits for the exit.
func (g *Guard) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-g.done:
		return g.exit, nil
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
}

// Do runs f, with the lock held, unless the exit is recorded, and returns
// its error; after the exit it runs nothing and returns nil, as a signal
// to a process that is gone is not an error (ESRCH is none either).
// f must not call g's other locking methods.
func (g *Guard) Do(f func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.Exited() {
		return nil
	}
	return f()
}

// Locked runs f with the lock held whatever the state, telling it
// whether the exit is recorded: for state of the caller's that must be
// ordered against the exit as well as the guarded actions are. f must not
// call g's other locking methods.
func (g *Guard) Locked(f func(exited bool)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g.Exited())
}

// Signal sends sig to the process (see Kill) unless it has been reaped.
func (g *Guard) Signal(sig syscall.Signal) error {
	return g.Do(func() error { return Kill(g.pid, sig) })
}

// SignalGroup sends sig to the process group the process leads (see
// KillGroup) unless it has been reaped: once the leader is reaped, the
// group's id may be reused along with its pid.
func (g *Guard) SignalGroup(sig syscall.Signal) error {
	return g.Do(func() error { return KillGroup(g.pid, sig) })
}

// Kill sends sig to the single process pid; ESRCH is not an error, the
// process being gone already. It refuses the pids kill(2) takes for more
// than one process (0 and below: groups, or every process) and PID 1 (the
// agent itself, as init): a pid gone wrong (os.Process.Release leaves -1
// behind) must never turn into a signal to everything.
//
// Kill alone does not know whether pid is still the process meant: use it
// on a pid the reaper has not yet delivered the exit of, or through a
// Guard.
func Kill(pid int, sig syscall.Signal) error {
	if pid <= 1 {
		return fmt.Errorf("signal %d to pid %d: %w", int(sig), pid, errRefused)
	}
	if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d to pid %d: %w", int(sig), pid, err)
	}
	return nil
}

// KillGroup sends sig to the process group pgid; ESRCH is not an error.
// It refuses pgid 1 and below for Kill's reasons: kill(2) takes -1 for
// every process and 0 for the caller's own group, and a negative pgid
// would name a single process instead.
func KillGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return fmt.Errorf("signal %d to process group %d: %w", int(sig), pgid, errRefused)
	}
	if err := unix.Kill(-pgid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d to process group %d: %w", int(sig), pgid, err)
	}
	return nil
}
