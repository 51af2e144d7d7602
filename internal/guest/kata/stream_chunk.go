package kata

import (
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/unary"
)

// Output read ahead is kept in chunks, each a buffer with room before its
// bytes for the envelope of the unary reply that will carry them: a
// ReadStdout that takes a whole chunk is answered from the chunk itself,
// its envelope written into that room (unary.ReplyInPlace), with no copy
// of the bytes in user space between the pipe and the port (decisions
// §35). One readv fills several chunks, so reading a pipe's worth ahead
// is still one system call.

const (
	// chunkHead is the room before a chunk's bytes.
	chunkHead = unary.Headroom
	// chunkSize is a chunk's buffer: the room and maxRead bytes, within
	// Go's 32 KiB allocation class.
	chunkSize = chunkHead + maxRead
	// maxChunks is the most chunks one fill reads into: a read-ahead's
	// worth, and the tail of the chunk before.
	maxChunks = (readAhead+maxRead-1)/maxRead + 1
)

// The room also holds a kept log record's header (logKeeper.drain).
const _ uint = chunkHead - recordHeader

type chunkBuf [chunkSize]byte

// chunks recycles chunk buffers: a reply written from a chunk gives it
// back (see chunk.release), so reading output allocates (and zeroes)
// nothing once the pool holds a read-ahead's worth.
var chunks = sync.Pool{New: func() any { return new(chunkBuf) }}

// chunk is output read from a pipe or terminal: b[off:end] is unread,
// b[:off] (at least chunkHead bytes) is free for an envelope, b[end:] is
// free to read more into.
type chunk struct {
	b        *chunkBuf
	off, end int
}

func newChunk() chunk { return chunk{b: chunks.Get().(*chunkBuf), off: chunkHead, end: chunkHead} }

func (c *chunk) len() int { return c.end - c.off }

// bytes is the chunk's unread bytes, with no room to append over what
// follows.
func (c *chunk) bytes() []byte { return c.b[c.off:c.end:c.end] }

// release gives the buffer back for reuse: nothing may use the chunk's
// bytes afterwards.
func (c *chunk) release() {
	if c.b != nil {
		chunks.Put(c.b)
		c.b = nil
	}
}

// aheadLen is how many bytes are read ahead.
func (s *outStream) aheadLen() int {
	n := 0
	for i := range s.ahead {
		n += s.ahead[i].len()
	}
	return n
}

// pop removes the first chunk read ahead.
func (s *outStream) pop() {
	s.ahead[0] = chunk{}
	if s.ahead = s.ahead[1:]; len(s.ahead) == 0 {
		s.ahead = s.queue[:0]
	}
}

// takeAhead hands out up to n bytes read ahead (there are some), in a
// chunk the caller owns. A chunk holding exactly n, or less where nothing
// follows it, is handed out whole, as it is; otherwise the bytes are
// copied into a new chunk: n of the first chunk's bytes, or the first
// chunk's and the next's up to n. Called holding the turn.
func (s *outStream) takeAhead(n int) chunk {
	front := &s.ahead[0]
	if l := front.len(); l == n || l < n && len(s.ahead) == 1 {
		c := *front
		s.pop()
		return c
	}
	c := newChunk()
	for c.len() < n && len(s.ahead) > 0 {
		f := &s.ahead[0]
		k := copy(c.b[c.end:chunkHead+n], f.b[f.off:f.end])
		c.end += k
		if f.off += k; f.off == f.end {
			f.release()
			s.pop()
		}
	}
	return c
}

// fill reads up to want bytes into the free tail of the last chunk read
// ahead and new chunks after it, in one readv, and returns how many it
// read. wait says whether to wait for output (under the file's deadline)
// when there is none; without it, an empty pipe reads 0 and no error. As
// os.File.Read, it returns io.EOF when no writer is left. Called holding
// the turn.
func (s *outStream) fill(want int, wait bool) (int, error) {
	var iov [maxChunks][]byte
	vs := iov[:0]
	from := len(s.ahead) // the first chunk read into
	if from > 0 {
		if last := &s.ahead[from-1]; last.end < chunkSize {
			vs = append(vs, last.b[last.end:])
			want -= chunkSize - last.end
			from--
		}
	}
	for ; want > 0 && len(vs) < maxChunks; want -= maxRead {
		c := newChunk()
		s.ahead = append(s.ahead, c)
		vs = append(vs, c.b[chunkHead:])
	}
	if len(vs) == 0 {
		return 0, nil
	}
	var k int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			k, rerr = unix.Readv(int(fd), vs)
			switch {
			case rerr == unix.EINTR:
				continue
			case rerr == unix.EAGAIN && wait:
				return false
			case rerr == unix.EAGAIN:
				k, rerr = 0, nil
			}
			return true
		}
	})
	k = max(k, 0)
	if err == nil {
		err = rerr
	}
	// The bytes read went into the chunks in order; new chunks that got
	// none go back.
	left := k
	for i := from; i < len(s.ahead); i++ {
		c := &s.ahead[i]
		m := min(left, chunkSize-c.end)
		c.end += m
		left -= m
	}
	for n := len(s.ahead); n > 0 && s.ahead[n-1].len() == 0; n = len(s.ahead) {
		s.ahead[n-1].release()
		s.ahead[n-1] = chunk{}
		s.ahead = s.ahead[:n-1]
	}
	if len(s.ahead) == 0 {
		s.ahead = s.queue[:0]
	}
	switch {
	case k > 0:
		// An error that comes with data comes again on the next read.
		return k, nil
	case err != nil:
		return 0, s.readError(err)
	case wait:
		return 0, io.EOF
	}
	return 0, nil
}

// readError is err, from reading f, as os.File.Read would have it: a
// file closed under the read is os.ErrClosed.
func (s *outStream) readError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return os.ErrClosed
	}
	return &os.PathError{Op: "read", Path: s.f.Name(), Err: err}
}
