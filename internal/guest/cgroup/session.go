package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// pollEvery is how often Close looks whether a killed session is empty:
// SIGKILL takes effect within a scheduling round, and the processes it
// killed are out of the cgroup once they have exited.
const pollEvery = 5 * time.Millisecond

// Sessions is the parent of the exec sessions' cgroups.
type Sessions struct {
	dir string
	seq atomic.Uint64
}

// OpenSessions returns dir, a cgroup v2 directory, as a parent of
// sessions, making it if it is missing. The tree's (Tree.Sessions) is
// the guest's; another is for tests and for an agent that is not PID 1.
func OpenSessions(dir string) (*Sessions, error) {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("sessions' cgroup: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, procs)); err != nil {
		return nil, fmt.Errorf("sessions' cgroup %s: not a cgroup: %w", dir, err)
	}
	return &Sessions{dir: dir}, nil
}

// Dir is the parent's directory.
func (s *Sessions) Dir() string { return s.dir }

// New makes a session's cgroup, named by a number.
func (s *Sessions) New() (*Session, error) {
	for {
		dir := filepath.Join(s.dir, strconv.FormatUint(s.seq.Add(1), 10))
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrExist) {
			// Left by an agent that served this tree before; not ours.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("session's cgroup: %w", err)
		}
		// O_PATH: clone3 needs only a reference to the directory.
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			os.Remove(dir)
			return nil, fmt.Errorf("session's cgroup: open %s: %w", dir, err)
		}
		return &Session{dir: dir, fd: fd}, nil
	}
}

// Session is one exec session's cgroup. Its processes are put there as
// they are created (FD, for clone3's CLONE_INTO_CGROUP), so everything
// they start is there too, whatever session or process group it makes
// for itself; Kill ends all of it at once, leaving none of them time to
// fork another (cgroup.kill, Linux 5.14).
type Session struct {
	dir string

	mu     sync.Mutex
	fd     int
	closed bool
	err    error // Close's
}

// Dir is the session's cgroup directory.
func (s *Session) Dir() string { return s.dir }

// FD is the open cgroup directory, for syscall.SysProcAttr.CgroupFD. It is
// valid until Close.
func (s *Session) FD() int { return s.fd }

// Kill kills every process in the session with SIGKILL. After Close it
// does nothing: there is nothing left.
func (s *Session) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	return writeFile(s.dir, kill, "1")
}

// Close kills what is left in the session, waits (bounded by ctx) until
// it is empty, and removes its cgroup. Only the first call does so; every
// call returns its error.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.err
	}
	s.closed = true
	unix.Close(s.fd)
	s.err = s.remove(ctx)
	return s.err
}

func (s *Session) remove(ctx context.Context) error {
	if err := writeFile(s.dir, kill, "1"); err != nil {
		return fmt.Errorf("end session: %w", err)
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		busy, err := populated(s.dir)
		if err != nil {
			return fmt.Errorf("end session: %w", err)
		}
		if !busy {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end session: %s still has processes after SIGKILL: %w", s.dir, ctx.Err())
		case <-tick.C:
		}
	}
	if err := os.Remove(s.dir); err != nil {
		return fmt.Errorf("end session: %w", err)
	}
	return nil
}
