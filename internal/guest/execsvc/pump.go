package execsvc

import (
	"errors"
	"io"
	"os"
	"syscall"
	"time"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/guest/ttyio"
)

const (
	// chunkSize is the most one read, and so one message, carries.
	chunkSize = execv1.MaxChunk
	// drainGrace is how long output may stay idle after the exit before
	// the pumps stop waiting for EOF, which descendants holding the pipes
	// or the terminal would otherwise delay forever.
	drainGrace = 250 * time.Millisecond
)

// pump sends what f delivers to the output channel until EOF (a pipe with
// no writer left), EIO (a master with no slave left), Kill, or the drain
// after the exit ends.
//
// The drain must not lose what the process wrote before it exited, however
// slow the client, yet must end while descendants keep writing. So after the
// exit, each read waits at most drainGrace for data (time spent blocked on
// the client does not count), and the pump stops once it has read as much
// as the pipe or terminal could have held at the exit: anything past that
// was written later, by someone else.
func (p *Process) pump(f *os.File, s Stream) {
	defer p.pumps.Done()
	buf := chunks.Get().(*[]byte)
	defer func() {
		if buf != nil {
			chunks.Put(buf)
		}
	}()
	owed := int64(-1) // bytes that may still be the process's; -1 before the exit
	for {
		select {
		case <-p.abort:
			return
		default:
		}
		if owed < 0 && p.hasExited() {
			owed = ttyio.Backlog(f)
		}
		if owed == 0 {
			p.log.Debug("output left to descendants", "pid", p.pid, "stream", s)
			return
		}
		if owed > 0 && !p.armDeadline(f) {
			return
		}
		n, err := f.Read(*buf)
		if n > 0 {
			c := Chunk{Stream: s, Data: (*buf)[:n], buf: buf}
			buf = nil
			if !p.emit(c) {
				c.Release()
				return
			}
			buf = chunks.Get().(*[]byte)
			if owed > 0 {
				owed = max(owed-int64(n), 0)
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && owed < 0 {
				// Woken by the exit (or Kill); data may be waiting still.
				continue
			}
			p.readDone(s, err)
			return
		}
	}
}

// armDeadline gives the next read drainGrace, unless Kill has already
// stopped the pump (its immediate deadline must not be pushed back).
func (p *Process) armDeadline(f *os.File) bool {
	armed := false
	p.guard.Locked(func(bool) {
		if !p.aborted {
			f.SetReadDeadline(time.Now().Add(drainGrace))
			armed = true
		}
	})
	return armed
}

// emit hands one read to the consumer, who releases it.
func (p *Process) emit(c Chunk) bool {
	select {
	case p.out <- c:
		return true
	case <-p.abort:
		return false
	}
}

func (p *Process) readDone(s Stream, err error) {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.EIO):
		// The end of output.
	case errors.Is(err, os.ErrDeadlineExceeded):
		p.log.Debug("output idle after exit; not waiting for EOF", "pid", p.pid, "stream", s)
	case errors.Is(err, os.ErrClosed):
	default:
		p.log.Warn("read output", "pid", p.pid, "stream", s, "err", err)
	}
}
