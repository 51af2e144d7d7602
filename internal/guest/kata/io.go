package kata

import (
	"context"
	"fmt"
	"math"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// The calls on a container's processes. An empty exec id means the
// container's init, as does the container's own id.

// Signal sends sig to a process. SIGKILL with an empty exec id kills every
// process of the container (the runtime freezes its cgroup, kills, and
// thaws), as upstream does; the init's exit then follows.
func (s *Sandbox) Signal(ctx context.Context, id, execID string, sig syscall.Signal) error {
	if sig <= 0 || sig > maxSignal {
		return errdefs.InvalidArgument("signal", fmt.Sprintf("%d is not a signal number", int(sig)))
	}
	if execID == "" && sig == unix.SIGKILL {
		if err := checkID("container_id", id); err != nil {
			return err
		}
		if _, err := s.container(id); err != nil {
			return err
		}
		_, err := s.rt.run([]string{"kill", "--all", id, "KILL"}, nil)
		return err
	}
	_, p, err := s.process(id, execID, false)
	if err != nil {
		return err
	}
	return p.signal(sig)
}

// Wait waits for a process's exit and forgets the process: another Wait,
// a signal or stdin for it find nothing. Its output can still be read to
// the end.
func (s *Sandbox) Wait(ctx context.Context, id, execID string) (reaper.Exit, error) {
	c, p, err := s.process(id, execID, false)
	if err != nil {
		return reaper.Exit{}, err
	}
	e, err := p.wait(ctx)
	if err != nil {
		return reaper.Exit{}, err
	}
	s.mu.Lock()
	p.waited = true
	s.forgetDrained(c, p)
	s.mu.Unlock()
	return e, nil
}

// ReadOutput reads up to n bytes of a process's stdout (or stderr),
// waiting for some; empty once it has ended (see outStream).
func (s *Sandbox) ReadOutput(ctx context.Context, id, execID string, stderr bool, n int) ([]byte, error) {
	ch, err := s.readOutput(ctx, id, execID, stderr, n)
	if err != nil || ch.b == nil {
		return nil, err
	}
	// The chunk is never released: the bytes are the caller's.
	return ch.bytes(), nil
}

// readOutput is ReadOutput giving the bytes in a chunk the caller owns;
// no chunk once the output has ended.
func (s *Sandbox) readOutput(ctx context.Context, id, execID string, stderr bool, n int) (chunk, error) {
	var ch chunk
	err := s.readOutputWith(id, execID, stderr, func(out *outStream) (ended bool, err error) {
		ch, err = out.take(ctx, n)
		return ch.b == nil, err
	})
	return ch, err
}

// readOutputChunks is readOutput for up to n bytes in several chunks
// (outStream.takeChunks); none once the output has ended.
func (s *Sandbox) readOutputChunks(ctx context.Context, id, execID string, stderr bool, n int) ([]chunk, error) {
	var cs []chunk
	err := s.readOutputWith(id, execID, stderr, func(out *outStream) (ended bool, err error) {
		cs, err = out.takeChunks(ctx, n)
		return len(cs) == 0, err
	})
	return cs, err
}

// readOutputWith reads a process's output with read, and forgets the
// process once read says its output has ended and it has been waited for.
func (s *Sandbox) readOutputWith(id, execID string, stderr bool, read func(*outStream) (ended bool, err error)) error {
	c, p, err := s.process(id, execID, true)
	if err != nil {
		return err
	}
	if err := s.readable(c, p); err != nil {
		return err
	}
	out := p.stdout
	if stderr {
		out = p.stderr
	}
	ended, err := read(out)
	if err == nil && ended {
		s.mu.Lock()
		s.forgetDrained(c, p)
		s.mu.Unlock()
	}
	return err
}

// WriteStdin writes all of b to a process's stdin, and returns how much
// went.
func (s *Sandbox) WriteStdin(ctx context.Context, id, execID string, b []byte) (int, error) {
	_, p, err := s.process(id, execID, false)
	if err != nil {
		return 0, err
	}
	return p.stdin.Write(ctx, b)
}

// CloseStdin ends a process's input (see inStream.Close).
func (s *Sandbox) CloseStdin(ctx context.Context, id, execID string) error {
	_, p, err := s.process(id, execID, false)
	if err != nil {
		return err
	}
	return p.stdin.Close(ctx)
}

// Resize sets the size of a process's terminal.
func (s *Sandbox) Resize(ctx context.Context, id, execID string, rows, cols uint32) error {
	if rows > math.MaxUint16 || cols > math.MaxUint16 {
		return errdefs.InvalidArgument("row", fmt.Sprintf("%dx%d is larger than a terminal can be", rows, cols))
	}
	_, p, err := s.process(id, execID, false)
	if err != nil {
		return err
	}
	return p.resize(uint16(rows), uint16(cols))
}

// process finds a process; one waited for only for output, which can be
// read until it ends.
func (s *Sandbox) process(id, execID string, output bool) (*container, *process, error) {
	if err := checkID("container_id", id); err != nil {
		return nil, nil, err
	}
	if execID != "" {
		if err := checkID("exec_id", execID); err != nil {
			return nil, nil, err
		}
	}
	c, err := s.container(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		execID = id
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := c.procs[execID]
	if p == nil || p.waited && !output {
		return nil, nil, fmt.Errorf("process %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// forgetDrained drops a process that has been waited for and whose output
// has been read to the end. Called with s.mu held.
func (s *Sandbox) forgetDrained(c *container, p *process) {
	if !p.waited || !p.stdout.ended() || !p.stderr.ended() {
		return
	}
	if c.procs[p.id] == p {
		delete(c.procs, p.id)
	}
	p.release()
	s.forgotten(c, p)
}
