package unary

import (
	"context"
	"errors"
	"io"
	"net"
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
)

// Conn is a client connection whose unary calls go over one stream with
// this package's framing, and whose streaming calls go to a gRPC
// connection. It opens its stream on the first call and again after the
// stream fails.
type Conn struct {
	open    func() (net.Conn, error)
	streams grpc.ClientConnInterface

	mu      sync.Mutex
	cur     *clientStream
	closed  bool
	nextID  uint64
	pending map[uint64]chan *channelv1.Reply
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// NewConn returns a Conn that opens its unary-call stream with open and
// sends streaming calls to streams.
func NewConn(open func() (net.Conn, error), streams grpc.ClientConnInterface) *Conn {
	return &Conn{open: open, streams: streams, pending: map[uint64]chan *channelv1.Reply{}}
}

// clientStream is one opened unary-call stream.
type clientStream struct {
	conn net.Conn
	fw   *frameWriter
}

var errClosed = errors.New("unary: connection closed")

// stream returns the current stream, opening one if needed.
func (c *Conn) stream() (*clientStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	if c.cur != nil {
		return c.cur, nil
	}
	conn, err := c.open()
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(conn, Preface); err != nil {
		conn.Close()
		return nil, err
	}
	cs := &clientStream{conn: conn, fw: &frameWriter{w: conn}}
	c.cur = cs
	go c.readReplies(cs)
	return cs, nil
}

// readReplies delivers replies until the stream fails, then fails the
// calls still waiting on it.
func (c *Conn) readReplies(cs *clientStream) {
	fr := newFrameReader(cs.conn)
	for {
		f, err := fr.read()
		if err != nil {
			break
		}
		r := f.GetReply()
		if r == nil {
			continue
		}
		c.mu.Lock()
		ch := c.pending[r.GetId()]
		delete(c.pending, r.GetId())
		c.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	cs.conn.Close()
	c.mu.Lock()
	if c.cur == cs {
		c.cur = nil
	}
	// Every call in flight went out on this stream: there is only ever
	// one at a time.
	for id, ch := range c.pending {
		delete(c.pending, id)
		close(ch)
	}
	c.mu.Unlock()
}

// Close fails calls in flight and refuses new ones. It does not close the
// streaming connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	cs := c.cur
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
		return status.Errorf(codes.Internal, "unary: encode request: %v", err)
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
			return status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
		}
		call.TimeoutNanos = int64(left)
	}

	cs, err := c.stream()
	if err != nil {
		return status.Errorf(codes.Unavailable, "unary: %v", err)
	}
	ch := make(chan *channelv1.Reply, 1)
	c.mu.Lock()
	c.nextID++
	call.Id = c.nextID
	c.pending[call.Id] = ch
	c.mu.Unlock()
	if err := cs.fw.write(&channelv1.Frame{Call: call}); err != nil {
		c.forget(call.Id)
		cs.conn.Close()
		return status.Errorf(codes.Unavailable, "unary: send: %v", err)
	}

	var r *channelv1.Reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		c.forget(call.Id)
		cs.fw.write(&channelv1.Frame{Cancel: &channelv1.Cancel{Id: call.Id}})
		return status.FromContextError(ctx.Err()).Err()
	}
	if r == nil {
		return status.Error(codes.Unavailable, "unary: connection lost during the call")
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
		return status.Errorf(codes.Internal, "unary: decode response: %v", err)
	}
	return nil
}

func (c *Conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}
