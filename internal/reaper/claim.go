package reaper

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Retention bounds the exits a reap-all Reaper keeps for Claim: the last
// KeepExits exits nobody waited for, none older than KeepFor. A process
// someone means to claim is claimed within moments of its exit (the time
// between a runtime's exit and the agent reading its pid file), so both are
// generous; they only stop orphans nobody will ask about from piling up.
const (
	KeepExits = 128
	KeepFor   = time.Minute
)

var (
	// ErrClaimed is returned by Claim when someone already waits for pid.
	ErrClaimed = errors.New("reaper: pid already has a waiter")
	// ErrExitLost is returned by Claim when pid no longer exists and no
	// exit is kept for it: it ended and was reaped, but its exit was
	// dropped (too old, or too many exits since).
	ErrExitLost = errors.New("reaper: process is gone and its exit is no longer kept")
)

// keptExit is an exit nobody waited for when it was reaped.
type keptExit struct {
	exit Exit
	at   time.Time
}

// Claim returns a channel that receives pid's exit: one already reaped and
// kept (see KeepExits), or the one to come.
//
// It is for processes this one did not start itself and learns of late: a
// container's processes, started by a runtime that exits at once, come to
// PID 1 (or a subreaper) as orphans and may be reaped, as orphans, before
// their pid is known. pid must be a child of this process, directly or by
// reparenting (wait4 never delivers another's); a Reaper not in reap-all
// mode waits for it from now on, and keeps nothing, since it reaps only
// the pids it was given.
//
// A kept exit is only taken for pid's while no process has that pid: if
// one does, the kept exit is an earlier process's that had the same pid,
// and the claim waits for the living one. A process reaped before the
// claim and no longer kept cannot be waited for: Claim returns ErrExitLost
// rather than a channel that would never deliver.
func (r *Reaper) Claim(pid int) (<-chan Exit, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("reaper: claim pid %d: %w", pid, ErrNoPid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiters[pid]; ok {
		return nil, fmt.Errorf("claim pid %d: %w", pid, ErrClaimed)
	}
	r.prune()
	kept, found := r.take(pid)
	// Under r.mu nothing is reaped, so a pid that exists now (running or a
	// zombie) stays until the waiter below is registered.
	alive := unix.Kill(pid, 0) != unix.ESRCH
	ch := make(chan Exit, 1)
	switch {
	case alive:
		if found {
			r.log.Debug("dropped a stale kept exit: its pid is in use again", "exit", kept.String())
		}
	case found:
		ch <- kept
		return ch, nil
	default:
		// Gone: reaped unkept, or by someone else, or never there.
		return nil, fmt.Errorf("claim pid %d: %w", pid, ErrExitLost)
	}
	r.waiters[pid] = ch
	// It may be a zombie whose SIGCHLD came before the claim.
	select {
	case r.wake <- syscall.SIGCHLD:
	default:
	}
	return ch, nil
}

// keep records an exit nobody waited for, within the bounds. Called with
// r.mu held.
func (r *Reaper) keep(exit Exit) {
	if !r.all {
		return
	}
	// A pid's newest exit is the only one a claim could want.
	r.take(exit.Pid)
	r.kept = append(r.kept, keptExit{exit: exit, at: r.now()})
	r.prune()
}

// take removes and returns the kept exit of pid. Called with r.mu held.
func (r *Reaper) take(pid int) (Exit, bool) {
	for i, k := range r.kept {
		if k.exit.Pid == pid {
			r.kept = append(r.kept[:i], r.kept[i+1:]...)
			return k.exit, true
		}
	}
	return Exit{}, false
}

// prune drops the exits beyond KeepExits or older than KeepFor. Called with
// r.mu held.
func (r *Reaper) prune() {
	drop := max(len(r.kept)-KeepExits, 0)
	cutoff := r.now().Add(-KeepFor)
	for drop < len(r.kept) && r.kept[drop].at.Before(cutoff) {
		drop++
	}
	if drop == 0 {
		return
	}
	// Copy down rather than reslice, so that the array does not grow
	// without bound under a steady stream of orphans.
	n := copy(r.kept, r.kept[drop:])
	clear(r.kept[n:])
	r.kept = r.kept[:n]
}
