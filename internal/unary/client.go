package unary

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// Conn is a client connection whose unary calls go over one stream with
// this package's framing, and whose streaming calls go to a gRPC
// connection. It opens its stream on the first call and again after the
// stream fails.
//
// No goroutine of its own reads replies. One of the calls waiting for a
// reply reads the stream, hands the replies of others to them, and when
// its own comes, passes reading on to another waiting call, if any. So the
// caller a reply is for is usually the one its arrival wakes: on hosts
// where waking a thread is dear, that is a good part of a call saved.
// Between calls nobody reads; a reply to a cancelled call waits in the
// socket for the next call's reader, and a stream that ended is noticed
// by the next call, which fails Unavailable.
//
// A call's context bounds the opening of a stream and the writing of its
// request as well as the wait for its reply. A request cut short leaves
// the stream corrupt, so the stream is then lost as when it fails.
type Conn struct {
	open    func(context.Context) (net.Conn, error)
	streams grpc.ClientConnInterface

	mu       sync.Mutex
	cur      *clientStream
	opening  chan struct{}      // closed when the open under way ends; nil if none
	stopOpen context.CancelFunc // cuts the open under way short, for Close
	closed   bool
	nextID   uint64
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// NewConn returns a Conn that opens its unary-call stream with open, which
// should give up when its context ends, and sends streaming calls to
// streams.
func NewConn(open func(context.Context) (net.Conn, error), streams grpc.ClientConnInterface) *Conn {
	// Call ids start at random: a reply the agent still owed a host that
	// left (a cabind that restarted) then matches none of this one's
	// calls, and is dropped as unknown.
	return &Conn{open: open, streams: streams, nextID: rand.Uint64N(1 << 62)}
}

// clientStream is one opened unary-call stream. Its fields but conn and
// the two codecs are guarded by Conn.mu.
type clientStream struct {
	conn net.Conn
	fw   *frameWriter
	fr   *frameReader // used by the reading call only

	pending map[uint64]chan wake // calls sent and not yet answered
	reading bool                 // a call reads, or has been told to
}

// wake is what a waiting call is sent: its reply, or the turn to read;
// a closed channel says the stream was lost. A call is sent at most one.
type wake struct {
	reply *channelv1.Reply
	read  bool
}

var (
	errClosed = errors.New("unary: connection closed")
	errLost   = errors.New("unary: connection lost during the call")
)

// send opens a stream if there is none, and sends call on it, numbered.
// It returns the stream and the channel the call's wake comes on. When
// ctx ends first, it returns ctx's error; a call it had begun to write
// leaves the stream corrupt, so the stream is lost.
func (c *Conn) send(ctx context.Context, call *channelv1.Call) (*clientStream, chan wake, error) {
	c.mu.Lock()
	cs, err := c.streamLocked(ctx)
	if err != nil {
		c.mu.Unlock()
		return nil, nil, err
	}
	c.nextID++
	call.Id = c.nextID
	ch := make(chan wake, 1)
	cs.pending[call.Id] = ch
	c.mu.Unlock()
	if n, err := cs.fw.write(ctx, &channelv1.Frame{Call: call}); err != nil {
		if n == 0 && (errors.Is(err, errFrameTooLarge) || errors.Is(err, errUnsendable) || ctx.Err() != nil) {
			// Refused, or given up, before a byte was written: the
			// stream, and the other calls on it, are fine.
			c.withdraw(cs, call.Id, ch)
			return nil, nil, err
		}
		c.lose(cs)
		return nil, nil, err
	}
	return cs, ch, nil
}

// cancelTimeout bounds the writing of a Cancel frame; see cancel.
const cancelTimeout = 5 * time.Second

// cancel tells the server that the call id on cs was given up. The
// caller's context has ended, so it should not wait on a peer that does
// not read: cancel runs on a goroutine of its own, for at most
// cancelTimeout.
func (c *Conn) cancel(cs *clientStream, id uint64) {
	ctx, stop := context.WithTimeout(context.Background(), cancelTimeout)
	defer stop()
	if n, err := cs.fw.write(ctx, &channelv1.Frame{Cancel: &channelv1.Cancel{Id: id}}); err != nil && n > 0 {
		c.lose(cs)
	}
}

// withdraw takes call id off cs's pending calls, passing on the turn to
// read if it was just given to it.
func (c *Conn) withdraw(cs *clientStream, id uint64, ch chan wake) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(cs.pending, id)
	select {
	case w := <-ch:
		if w.read {
			c.passReading(cs)
		}
	default:
	}
}

// streamLocked returns the current stream, opening one if needed, or
// waiting for the open under way, until ctx ends. c.mu is held, but not
// while opening or waiting: calls that find no stream wait each on its
// own context, not behind a lock.
func (c *Conn) streamLocked(ctx context.Context) (*clientStream, error) {
	for c.opening != nil && !c.closed && c.cur == nil {
		wait := c.opening
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
		}
		c.mu.Lock()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	if c.closed {
		return nil, errClosed
	}
	if c.cur != nil {
		return c.cur, nil
	}
	done := make(chan struct{})
	dctx, stop := context.WithCancel(ctx)
	c.opening, c.stopOpen = done, stop
	c.mu.Unlock()
	conn, err := c.dial(dctx)
	c.mu.Lock()
	stop()
	c.opening, c.stopOpen = nil, nil
	close(done)
	if c.closed {
		if conn != nil {
			conn.Close()
		}
		return nil, errClosed
	}
	if err != nil {
		return nil, err
	}
	c.cur = &clientStream{conn: conn, fw: newFrameWriter(conn, maxFrame), fr: newFrameReader(conn, maxReply), pending: map[uint64]chan wake{}}
	return c.cur, nil
}

// dial opens a stream and sends the Preface, giving up when ctx ends.
func (c *Conn) dial(ctx context.Context) (net.Conn, error) {
	conn, err := c.open(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if _, err := writeContext(ctx, conn, []byte(Preface)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// await returns the reply to call id, sent on cs with channel ch. It
// waits on ch, or reads the stream when no other call does.
func (c *Conn) await(ctx context.Context, cs *clientStream, id uint64, ch chan wake) (*channelv1.Reply, error) {
	c.mu.Lock()
	// Wakes are sent under c.mu. One may have come between send and here:
	// the reply, read by another call, or the turn to read, or the loss.
	// The reading flag no longer tells of it then.
	select {
	case w, ok := <-ch:
		c.mu.Unlock()
		if !ok {
			return nil, errLost
		}
		if w.reply != nil {
			return w.reply, nil
		}
		return c.readFor(ctx, cs, id)
	default:
	}
	read := !cs.reading
	cs.reading = true
	c.mu.Unlock()
	for !read {
		select {
		case w, ok := <-ch:
			if !ok {
				return nil, errLost
			}
			if w.reply != nil {
				return w.reply, nil
			}
			read = true
		case <-ctx.Done():
			// A turn to read sent just now is passed on.
			c.withdraw(cs, id, ch)
			return nil, ctx.Err()
		}
	}
	return c.readFor(ctx, cs, id)
}

// readFor reads cs until the reply to call id comes, delivering the
// others'. A cancelled ctx ends a read in progress through a read
// deadline; the frame reader keeps a partly read frame for the next reader.
func (c *Conn) readFor(ctx context.Context, cs *clientStream, id uint64) (*channelv1.Reply, error) {
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		cs.conn.SetReadDeadline(time.Now())
		close(interrupted)
	})
	// done ends this call's reading: the deadline is cleared before the
	// next reader starts.
	done := func() {
		if !stop() {
			<-interrupted
			cs.conn.SetReadDeadline(time.Time{})
		}
		delete(cs.pending, id)
		c.passReading(cs)
	}
	for {
		f, err := cs.fr.read()
		if err != nil {
			if isTimeout(err) && ctx.Err() != nil {
				c.mu.Lock()
				done()
				c.mu.Unlock()
				return nil, ctx.Err()
			}
			stop()
			c.lose(cs)
			return nil, errLost
		}
		r := f.GetReply()
		if r == nil {
			continue
		}
		c.mu.Lock()
		if r.GetId() == id {
			done()
			c.mu.Unlock()
			return r, nil
		}
		if ch, ok := cs.pending[r.GetId()]; ok {
			delete(cs.pending, r.GetId())
			ch <- wake{reply: r}
		}
		c.mu.Unlock()
	}
}

// isTimeout reports whether err is a read deadline passing. Sockets
// return os.ErrDeadlineExceeded, yamux streams an error of their own.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// passReading gives the turn to read cs to one of the calls waiting, if
// any. c.mu is held.
func (c *Conn) passReading(cs *clientStream) {
	for _, ch := range cs.pending {
		ch <- wake{read: true}
		return
	}
	cs.reading = false
}

// lose closes a failed stream and fails the calls waiting on it.
func (c *Conn) lose(cs *clientStream) {
	cs.conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == cs {
		c.cur = nil
	}
	for id, ch := range cs.pending {
		delete(cs.pending, id)
		close(ch)
	}
}

// Close fails calls in flight and refuses new ones. It does not close the
// streaming connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	cs := c.cur
	if c.stopOpen != nil {
		c.stopOpen()
	}
	c.mu.Unlock()
	if cs != nil {
		cs.conn.Close()
	}
	return nil
}

// NewStream starts a streaming call on the gRPC connection.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.streams.NewStream(ctx, desc, method, opts...)
}

// Invoke makes a unary call. It honours the call options cabin uses:
// ForceCodecV2 (the relay's raw frames), Header and Trailer.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	codec := encoding.GetCodecV2("proto")
	var header, trailer *metadata.MD
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.ForceCodecV2CallOption:
			codec = o.CodecV2
		case grpc.HeaderCallOption:
			header = o.HeaderAddr
		case grpc.TrailerCallOption:
			trailer = o.TrailerAddr
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	data, err := codec.Marshal(args)
	if err != nil {
		return errgrpc.Errorf(errdefs.ErrInternal, "unary: encode request: %v", err)
	}
	payload := data.Materialize()
	data.Free()
	call := &channelv1.Call{Method: method, Payload: payload}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		call.Metadata = toWire(md)
	}
	if d, ok := ctx.Deadline(); ok {
		left := time.Until(d)
		if left <= 0 {
			return errgrpc.ToGRPC(context.DeadlineExceeded)
		}
		call.TimeoutNanos = int64(left)
	}

	cs, ch, err := c.send(ctx, call)
	switch {
	case errors.Is(err, errFrameTooLarge):
		return errgrpc.Errorf(errdefs.ErrResourceExhausted, "unary: request to %s: %v (a frame holds at most %d bytes)", method, err, maxFrame)
	case errors.Is(err, errUnsendable):
		return errgrpc.Errorf(errdefs.ErrInternal, "unary: request to %s: %v", method, err)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case err != nil:
		return errgrpc.Errorf(errdefs.ErrUnavailable, "unary: %v", err)
	}
	r, err := c.await(ctx, cs, call.Id, ch)
	if errors.Is(err, errLost) {
		return errgrpc.Errorf(errdefs.ErrUnavailable, "%w", err)
	}
	if err != nil {
		go c.cancel(cs, call.Id)
		return status.FromContextError(err).Err()
	}
	if header != nil {
		*header = fromWire(r.GetHeader())
	}
	if trailer != nil {
		*trailer = fromWire(r.GetTrailer())
	}
	if r.GetCode() != int32(codes.OK) {
		return status.ErrorProto(&spb.Status{Code: r.GetCode(), Message: r.GetMessage(), Details: r.GetDetails()})
	}
	if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(r.GetPayload())}, reply); err != nil {
		return errgrpc.Errorf(errdefs.ErrInternal, "unary: decode response: %v", err)
	}
	return nil
}
