// Package unary carries unary gRPC calls over one byte stream without
// HTTP/2: each call is a length-prefixed cabin.channel.v1.Frame. The server
// dispatches calls straight into the handlers of ordinary gRPC service
// registrations, so service code does not know the difference; the client
// is a grpc.ClientConnInterface, so generated clients do not either.
//
// cabin uses it between cabind and a guest agent, where the guest runs
// under emulation and HTTP/2's per-call work (HPACK, flow control, a
// writer goroutine, pings) dominated a call's cost.
package unary

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
)

// Preface opens every unary-call stream, so an acceptor that also serves
// gRPC can tell the two apart: HTTP/2 opens with "PRI * HTTP/2.0".
const Preface = "CABIN-UNARY/1\n"

// maxFrame bounds a call frame, as the host writes it and the guest
// reads it. gRPC's default receive limit is 4 MiB, and messages here are
// far smaller.
const maxFrame = 16 << 20

// maxReply bounds a reply frame: cabind relays replies to clients that
// take at most gRPC's default 4 MiB, so it takes no more from a guest, which
// it does not trust; the rest is for the envelope, metadata and status.
// The server refuses to write a larger reply, as it does a frame too large.
const maxReply = 4<<20 + 64<<10

// minBuf is the first size of a frame reader's buffer; see read.
const minBuf = 64 << 10

var errFrameTooLarge = errors.New("unary: frame too large")

// errUnsendable marks a frame that could not be encoded. Like a frame too
// large, it is refused before a byte is written: the stream is still good.
var errUnsendable = errors.New("unary: frame cannot be encoded")

// frameReader reads length-prefixed frames. A read that fails, for
// instance at a read deadline, keeps what it has read of the frame so far,
// and the next read carries on from there.
type frameReader struct {
	r      *bufio.Reader
	max    int // the largest frame taken
	buf    []byte
	intern interner // may be nil

	head  [4]byte
	nhead int // bytes of head read
	size  int // the frame's length, once head is complete
	nbody int // bytes of the frame read into buf
}

// newFrameReader returns a frameReader of r that takes frames of up to
// max bytes.
func newFrameReader(r io.Reader, max int) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 16<<10), max: max}
}

func (fr *frameReader) read() (*channelv1.Frame, error) {
	if fr.nhead < len(fr.head) {
		if err := fill(fr.r, fr.head[:], &fr.nhead); err != nil {
			return nil, err
		}
		size := binary.BigEndian.Uint32(fr.head[:])
		if size > uint32(fr.max) {
			return nil, errFrameTooLarge
		}
		fr.size = int(size)
	}
	// The buffer grows, doubling, as the body arrives, not to the length
	// the peer declares: the peer cannot make the reader allocate much
	// more than it sends.
	for {
		n := min(fr.size, len(fr.buf))
		if err := fill(fr.r, fr.buf[:n], &fr.nbody); err != nil {
			return nil, err
		}
		if n == fr.size {
			break
		}
		grow := min(fr.size, max(2*len(fr.buf), minBuf))
		fr.buf = slices.Grow(fr.buf, grow-len(fr.buf))[:grow]
	}
	b := fr.buf[:fr.size]
	fr.nhead, fr.nbody = 0, 0
	f := new(channelv1.Frame)
	if err := decodeFrameInterning(b, f, fr.intern); err != nil {
		return nil, fmt.Errorf("unary: bad frame: %w", err)
	}
	return f, nil
}

// fill reads into b[*n:] until b is full, advancing *n as bytes arrive,
// so that after an error a later call resumes where this one stopped. An
// error that comes with the last bytes is left for the next read.
func fill(r io.Reader, b []byte, n *int) error {
	for *n < len(b) {
		m, err := r.Read(b[*n:])
		*n += m
		if err != nil && *n < len(b) {
			if err == io.EOF && *n > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// frameWriter writes frames, one write call each, from any goroutine.
type frameWriter struct {
	w   io.Writer
	max int // the largest frame written

	// lock is held while writing: a mutex that a caller whose context
	// ends can stop waiting for. It guards the fields below.
	lock   chan struct{}
	buf    []byte
	closed bool
}

// newFrameWriter returns a frameWriter to w that refuses frames larger
// than max bytes.
func newFrameWriter(w io.Writer, max int) *frameWriter {
	return &frameWriter{w: w, max: max, lock: make(chan struct{}, 1)}
}

// writeDeadliner is a writer whose writes a deadline can cut short, as a
// net.Conn's can.
type writeDeadliner interface {
	SetWriteDeadline(time.Time) error
}

// write writes f, giving up when ctx ends, with ctx's error, if w takes
// write deadlines. n is how much of the frame was written: after an error,
// none leaves the stream as it was, some leaves it corrupt.
func (fw *frameWriter) write(ctx context.Context, f *channelv1.Frame) (n int, err error) {
	return fw.writePayload(ctx, f, nil)
}

// acquire takes the writer for one frame, giving up when ctx ends; it
// fails on a closed writer, and then holds nothing.
func (fw *frameWriter) acquire(ctx context.Context) error {
	select {
	case fw.lock <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if fw.closed {
		<-fw.lock
		return errClosed
	}
	return nil
}

// release gives the writer back.
func (fw *frameWriter) release() { <-fw.lock }

// writePayload writes f with msg, when not nil, as its reply's payload
// (see appendFramePayload).
func (fw *frameWriter) writePayload(ctx context.Context, f *channelv1.Frame, msg proto.Message) (n int, err error) {
	if err := fw.acquire(ctx); err != nil {
		return 0, err
	}
	defer fw.release()
	b, err := appendFramePayload(append(fw.buf[:0], 0, 0, 0, 0), f, msg)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errUnsendable, err)
	}
	size := len(b) - 4
	if size > fw.max {
		return 0, errFrameTooLarge
	}
	binary.BigEndian.PutUint32(b, uint32(size))
	fw.buf = b
	// Under the lock, so the deadline is cleared before it passes on.
	return writeContext(ctx, fw.w, b)
}

// writeContext writes b to w, giving up when ctx ends, with ctx's error,
// if w takes write deadlines; it leaves w without one. n is how much of b
// was written.
func writeContext(ctx context.Context, w io.Writer, b []byte) (n int, err error) {
	if d, ok := w.(writeDeadliner); ok && ctx.Done() != nil {
		interrupted := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			d.SetWriteDeadline(time.Now())
			close(interrupted)
		})
		defer func() {
			if !stop() {
				<-interrupted
				d.SetWriteDeadline(time.Time{})
			}
		}()
	}
	n, err = w.Write(b)
	if err != nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return n, err
}

// close waits for a write under way to end and makes later writes fail
// without writing.
func (fw *frameWriter) close() {
	fw.lock <- struct{}{}
	fw.closed = true
	<-fw.lock
}

// decode unmarshals b into a freshly allocated m. Merge skips the reset
// proto.Unmarshal does first, which goes through reflection and, on a
// message that is already empty, does nothing; it is measurable on every
// call in a guest under emulation.
func decode(b []byte, m proto.Message) error {
	return proto.UnmarshalOptions{Merge: true}.Unmarshal(b, m)
}

func toWire(md metadata.MD) []*channelv1.Metadata {
	if len(md) == 0 {
		return nil
	}
	out := make([]*channelv1.Metadata, 0, len(md))
	for k, vs := range md {
		m := &channelv1.Metadata{Key: k, Values: make([][]byte, len(vs))}
		for i, v := range vs {
			m.Values[i] = []byte(v)
		}
		out = append(out, m)
	}
	return out
}

func fromWire(ms []*channelv1.Metadata) metadata.MD {
	if len(ms) == 0 {
		return nil
	}
	md := make(metadata.MD, len(ms))
	for _, m := range ms {
		for _, v := range m.GetValues() {
			md[m.GetKey()] = append(md[m.GetKey()], string(v))
		}
	}
	return md
}
