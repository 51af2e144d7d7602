package kata

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/ttyio"
)

const (
	// maxRead is the most one ReadStdout or ReadStderr returns, and what
	// a len of 0 asks for: 32 KiB less room for the reply's envelope, so
	// that a reply is one write to the agent's port, whose driver takes at
	// most 32 KiB a write. A full 32 KiB made every reply two writes, the
	// second of a few dozen bytes, each a guest exit and a wake-up of
	// cabind (decisions §31). Upstream returns what one read gives, up
	// to len, so a client never counts on len bytes.
	maxRead = 32<<10 - 64
	// drainGrace is how long output may stay idle after the exit before
	// a read takes it as the end: descendants that hold the pipe or the
	// terminal would otherwise hold it open forever.
	drainGrace = 250 * time.Millisecond
	// readAhead is the most one read takes from a process's output: what
	// the pipe holds beyond what the caller asked for is kept for the next
	// calls (outStream.ahead). Each read of a full pipe wakes its writer,
	// and under TCG that switch, to the writer and back, cost about as
	// much as a relayed call: taking a pipe's worth at a time (output
	// pipes hold readAhead, see enlargePipe) wakes it once per readAhead
	// instead of once a call (decisions §31).
	readAhead = 256 << 10
	// maxReply is the most one ReadStdout or ReadStderr returns to a
	// caller that asks for more than maxRead (cabind reading ahead does):
	// four reads' worth, written as four port writes of one reply, so
	// that one call's fixed cost in the guest carries four times the
	// bytes (decisions §38).
	maxReply = 4 * maxRead
)

// past is a deadline that has passed: setting it wakes a blocked call.
var past = time.Unix(1, 0)

// call is one ReadStdout, WriteStdin...: its context ending sets canceled
// and wakes it, unless it has returned (see guard).
type call struct{ canceled bool }

// guard lets one call at a time use a file, and arbitrates the file's
// deadline between that call's context and the process's exit. Every
// deadline change happens under mu and from the state mu guards, so that
// no wake-up is lost between a check and a blocking call.
type guard struct {
	turn chan struct{} // holds a token while a call runs
	mu   sync.Mutex
	cur  *call
}

func newGuard() guard { return guard{turn: make(chan struct{}, 1)} }

// enter waits for the turn and registers the call; wake is what its
// context's end does, with mu held. The returned leave must be called.
func (g *guard) enter(ctx context.Context, wake func()) (*call, func(), error) {
	select {
	case g.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	c := &call{}
	g.mu.Lock()
	g.cur = c
	g.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		// A late wake-up for a call that has returned must not touch
		// the next one's deadline.
		if g.cur == c {
			c.canceled = true
			wake()
		}
	})
	return c, func() {
		stop()
		g.mu.Lock()
		g.cur = nil
		g.mu.Unlock()
		<-g.turn
	}, nil
}

// outStream is a process's stdout or stderr (or its terminal, for both):
// the agent's read end, read by ReadStdout/ReadStderr.
//
// Nothing the process wrote before it exited is lost: that is in the pipe
// (or the terminal, whose slave the agent holds until the exit is known)
// when the exit is reported, and reads after the exit return it without
// waiting. The end comes at EOF (a pipe with no writer left, a master with
// no slave), or, since descendants may keep those open, once a read after
// the exit has waited drainGrace for data, or has read as much as the pipe
// or terminal could hold at the exit: anything past that was written
// later, by someone else.
type outStream struct {
	f  *os.File
	rc syscall.RawConn // f's
	guard
	// ahead is output read from f that no call has taken yet: calls take
	// it first, in order. Only the call holding the turn uses it; the
	// chunks handed out are the caller's.
	ahead []chunk
	queue [maxChunks + 1]chunk // ahead's array while it is short
	// Under mu:
	exited bool
	owed   int64 // bytes that may still be the process's; -1 until measured after the exit
	eof    bool
	closed bool
}

func newOutStream(f *os.File) *outStream {
	s := &outStream{f: f, guard: newGuard(), owed: -1}
	s.ahead = s.queue[:0]
	// Only a nil file has no RawConn.
	s.rc, _ = f.SyscallConn()
	return s
}

// Read returns up to n bytes (maxRead for 0), waiting for some; empty at
// the end.
func (s *outStream) Read(ctx context.Context, n int) ([]byte, error) {
	c, err := s.take(ctx, n)
	if err != nil || c.b == nil {
		return nil, err
	}
	// The chunk is never released: the bytes are the caller's.
	return c.bytes(), nil
}

// take returns up to n bytes (maxRead for 0), waiting for some, in a chunk
// the caller owns (and may release once done with it); no chunk at the
// end.
func (s *outStream) take(ctx context.Context, n int) (chunk, error) {
	if n <= 0 || n > maxRead {
		n = maxRead
	}
	var c chunk
	err := s.await(ctx, n, func() { c = s.takeAhead(n) })
	return c, err
}

// takeChunks is take for up to n bytes (maxReply at most; maxRead for 0)
// in as many chunks as they fill: the chunks read ahead as they are, the
// last one cut if it holds more than is left of n, so that no byte is
// copied but that last one's.
func (s *outStream) takeChunks(ctx context.Context, n int) ([]chunk, error) {
	if n <= 0 {
		n = maxRead
	}
	n = min(n, maxReply)
	var cs []chunk
	err := s.await(ctx, n, func() {
		for total := 0; total < n && len(s.ahead) > 0; {
			if f := &s.ahead[0]; f.len() <= n-total {
				cs = append(cs, *f)
				total += f.len()
				s.pop()
				continue
			}
			cs = append(cs, s.takeAhead(n-total))
			break
		}
	})
	return cs, err
}

// await waits for output and has take, holding the turn, hand some out
// of what is read ahead, of which there is some then: of at least n
// bytes where that much is there without waiting. It returns without
// calling take at the end.
func (s *outStream) await(ctx context.Context, n int, take func()) error {
	c, leave, err := s.enter(ctx, func() { s.f.SetReadDeadline(past) })
	if err != nil {
		return err
	}
	defer leave()
	if len(s.ahead) > 0 {
		// A call already given up takes nothing: its reply would not
		// reach anyone.
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.aheadLen() < n {
			s.topUp()
		}
		take()
		return nil
	}
	for {
		graced, end, err := s.arm(ctx, c)
		if err != nil || end {
			return err
		}
		// What is there now, up to readAhead; a waiting reader gets the
		// first bytes that come.
		k, err := s.fill(min(max(n, s.buffered()), readAhead), true)
		if k > 0 {
			s.mu.Lock()
			if s.owed > 0 {
				s.owed = max(s.owed-int64(k), 0)
			}
			s.mu.Unlock()
			take()
			return nil
		}
		if end, err := s.readFailed(ctx, c, graced, err); end || err != nil {
			return err
		}
	}
}

// enlargePipe lets a process's output pipe hold readAhead, so that its
// writer can run that far ahead of the reader (see readAhead) instead of
// the default 64 KiB. A pipe that cannot grow (past the user's pipe
// limit) stays as it is: only speed is lost.
func enlargePipe(r *os.File) {
	_ = ttyio.Control(r, func(fd int) error {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, readAhead)
		return err
	})
}

// topUp adds to ahead, which holds less than a call asked for, what f
// holds now, without waiting: the call then takes as much as it asked
// for where there is that much, rather than the short rest of the last
// read-ahead. After the exit it takes no more than may still be the
// process's (owed; see arm). Errors and the end are left for the next
// read, which meets them again. Called holding the turn.
func (s *outStream) topUp() {
	avail := s.buffered()
	s.mu.Lock()
	if s.exited {
		avail = int(min(int64(avail), s.owed)) // none until owed is measured
	}
	s.mu.Unlock()
	if avail <= 0 {
		return
	}
	// A deadline in the past (the exit's) makes this read fail at once
	// rather than wait; so does one of the call's context ending.
	k, _ := s.fill(min(avail, readAhead), false)
	if k <= 0 {
		return
	}
	s.mu.Lock()
	if s.owed > 0 {
		s.owed = max(s.owed-int64(k), 0)
	}
	s.mu.Unlock()
}

// buffered is how much f holds unread now; 0 when it cannot tell.
func (s *outStream) buffered() int {
	var n int
	if err := ttyio.Control(s.f, func(fd int) error {
		var err error
		// TIOCINQ is FIONREAD: pipes and terminals answer it.
		n, err = unix.IoctlGetInt(fd, unix.TIOCINQ)
		return err
	}); err != nil {
		return 0
	}
	return n
}

// arm sets the deadline for the next read: none before the exit, and
// drainGrace after. end reports that the stream has ended.
func (s *outStream) arm(ctx context.Context, c *call) (graced, end bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.canceled:
		return false, false, ctx.Err()
	case s.eof || s.closed:
		return false, true, nil
	case !s.exited:
		s.f.SetReadDeadline(time.Time{})
		return false, false, nil
	}
	if s.owed < 0 {
		s.owed = ttyio.Backlog(s.f)
	}
	if s.owed == 0 {
		// What is left was written after the exit, by descendants.
		s.eof = true
		return false, true, nil
	}
	s.f.SetReadDeadline(time.Now().Add(drainGrace))
	return true, false, nil
}

// readFailed sorts out a read that returned no data: end of the stream,
// the call's end, or a wake-up to read again.
func (s *outStream) readFailed(ctx context.Context, c *call, graced bool, err error) (end bool, _ error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		if c.canceled {
			return false, ctx.Err()
		}
		if graced {
			// Idle for drainGrace after the exit.
			s.eof = true
			return true, nil
		}
		// Woken by the exit: read again, with a deadline.
		return false, nil
	case err == nil:
		return false, nil
	case errors.Is(err, io.EOF), errors.Is(err, syscall.EIO):
		// No writer left; EIO on a master is its EOF.
		s.eof = true
		return true, nil
	case errors.Is(err, os.ErrClosed):
		// The container was removed.
		return true, nil
	}
	return false, fmt.Errorf("read output: %w", err)
}

// exit tells the stream the process has exited, waking a read blocked
// without a deadline.
func (s *outStream) exit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exited = true
	s.f.SetReadDeadline(past)
}

// ended tells whether a read has reached the end.
func (s *outStream) ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof || s.closed
}

// close releases the read end; a read in progress returns the end.
func (s *outStream) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.f.Close()
	}
}

// inStream is a process's stdin: the write end of its pipe, or the
// terminal's master.
type inStream struct {
	f   *os.File
	tty bool
	guard
	// Under mu:
	exited bool
	closed bool
}

func newInStream(f *os.File, tty bool) *inStream {
	return &inStream{f: f, tty: tty, guard: newGuard()}
}

// Write writes all of b, waiting while the process does not read it.
func (s *inStream) Write(ctx context.Context, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c, leave, err := s.enter(ctx, func() { s.f.SetWriteDeadline(past) })
	if err != nil {
		return 0, err
	}
	defer leave()
	s.mu.Lock()
	err = s.usable(ctx, c)
	if err == nil {
		s.f.SetWriteDeadline(time.Time{})
	}
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, err := s.f.Write(b)
	if err == nil {
		return n, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if uerr := s.usable(ctx, c); uerr != nil {
		return n, uerr
	}
	if errors.Is(err, syscall.EPIPE) {
		return n, fmt.Errorf("stdin: nothing reads it any more: %w", errdefs.ErrFailedPrecondition)
	}
	return n, fmt.Errorf("write stdin: %w", err)
}

// usable says why stdin cannot be written, if it cannot. Called with mu
// held.
func (s *inStream) usable(ctx context.Context, c *call) error {
	switch {
	case c.canceled:
		return ctx.Err()
	case s.exited:
		return fmt.Errorf("stdin: the process has exited: %w", errdefs.ErrFailedPrecondition)
	case s.closed:
		return fmt.Errorf("stdin: closed by CloseStdin: %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Close ends the process's input. A pipe is closed: the process reads EOF.
// A terminal stays open, as it is also the output; the EOF character is
// typed into it, as a user would, and a process reading a line reads EOF
// (or the partial line typed so far; a second CloseStdin then gives EOF).
func (s *inStream) Close(ctx context.Context) error {
	if s.tty {
		_, err := s.Write(ctx, []byte{ttyio.EOFChar(s.f)})
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && !s.exited {
		// A write in progress fails with ErrClosed, and reports the close.
		s.f.Close()
	}
	s.closed = true
	return nil
}

// exit tells stdin the process has exited: writes fail from now on, and a
// blocked one wakes. A pipe is closed (anything the process left reading
// it gets EOF); a terminal's master is also the output, still read.
func (s *inStream) exit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exited = true
	s.f.SetWriteDeadline(past)
	if !s.tty && !s.closed {
		s.f.Close()
		s.closed = true
	}
}

// close releases stdin's end (the pipe's; a master is closed with the
// output).
func (s *inStream) close() {
	if s.tty {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.f.Close()
	}
}
