package unary

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// Server serves unary calls with the handlers of the services registered
// on it. Register services through Registrar so that the same services are
// also served by a gRPC server, for streaming calls and ordinary clients.
type Server struct {
	log     *slog.Logger
	mu      sync.RWMutex
	methods map[string]method

	// Calls in flight, and whether new ones are refused (Drain).
	callsMu  sync.Mutex
	calls    int
	draining bool
	drained  chan struct{}

	// work hands calls to idle workers; see run.
	work        chan func()
	startWorker sync.Once
}

// workers is how many goroutines wait to read a connection or run a
// call (see connState): with one call at a time, two take turns. Work
// given to one of them runs on a stack already grown to what a call
// needs; a goroutine started per call grows its stack on every call
// (decoding a message goes deep), which is most of a call's cost in a
// guest under emulation.
const workers = 2

type method struct {
	name    string
	impl    any
	handler grpc.MethodHandler
}

// NewServer returns a Server with no services.
func NewServer(log *slog.Logger) *Server {
	return &Server{log: log, methods: map[string]method{}, work: make(chan func())}
}

// run runs f on an idle worker, or on a goroutine of its own when all are
// busy, so a slow call never holds up another.
func (s *Server) run(f func()) {
	s.startWorker.Do(func() {
		for range workers {
			go func() {
				for f := range s.work {
					f()
				}
			}()
		}
	})
	select {
	case s.work <- f:
	default:
		go f()
	}
}

// RegisterService registers the unary methods of a service; its streaming
// methods are left to gRPC. It implements grpc.ServiceRegistrar.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range desc.Methods {
		name := "/" + desc.ServiceName + "/" + m.MethodName
		s.methods[name] = method{name: name, impl: impl, handler: m.Handler}
	}
}

// Registrar registers services on both s and a gRPC server.
func (s *Server) Registrar(srv *grpc.Server) grpc.ServiceRegistrar {
	return both{s, srv}
}

type both struct {
	u *Server
	g *grpc.Server
}

func (b both) RegisterService(desc *grpc.ServiceDesc, impl any) {
	b.g.RegisterService(desc, impl)
	b.u.RegisterService(desc, impl)
}

// connState is one connection being served.
//
// One goroutine at a time reads the connection. When it reads a call, it
// hands reading on to another goroutine and runs the call itself, so the
// reply is written before anything else happens: in a guest under
// emulation the next read (which finds nothing and parks) costs a
// measurable share of a call. A slow call never holds up reading, since
// by the time it runs another goroutine reads.
type connState struct {
	s *Server
	// ctx carries the connection's values to its calls but not its
	// cancellation: calls are cancelled through calls, so a call's
	// context needs no registration with a parent.
	ctx    context.Context
	fr     *frameReader
	fw     *frameWriter
	read   func() // c.readFrames, bound once
	mu     sync.Mutex
	calls  map[uint64]context.CancelFunc
	result chan error // the error that ended reading
}

// ServeConn serves the calls arriving on conn (after its Preface, which
// the caller has consumed) until conn ends or ctx does. Calls run
// concurrently, so a slow one does not hold up the others; when conn
// ends, it is closed, and the calls still running are cancelled, their
// replies dropped. ServeConn returns without waiting for them: a call
// stuck in the kernel (a mount of a share whose server hangs) must not
// keep the next host from being served.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := &connState{
		s:      s,
		ctx:    peer.NewContext(context.WithoutCancel(ctx), &peer.Peer{Addr: conn.RemoteAddr(), LocalAddr: conn.LocalAddr()}),
		fr:     newFrameReader(conn, maxFrame),
		fw:     newFrameWriter(conn, maxReply),
		calls:  map[uint64]context.CancelFunc{},
		result: make(chan error, 1),
	}
	c.fr.intern = s.intern
	c.read = c.readFrames
	s.run(c.read)
	err := <-c.result
	// Calls still running have nobody to answer to, and must not answer
	// whoever comes next: the agent's connection is a session on a
	// virtio-serial port, and a write to the port after its host has gone
	// reaches the next host to hold it. Closing conn cuts short a reply
	// being written; closing the writer, which waits for that write to
	// end, drops those still to come, so the calls need not be waited for.
	conn.Close()
	c.fw.close()
	c.mu.Lock()
	for _, cancel := range c.calls {
		cancel()
	}
	c.mu.Unlock()
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil
	}
	return err
}

// readFrames reads frames until one is a call, hands reading on, and runs
// the call.
func (c *connState) readFrames() {
	for {
		f, err := c.fr.read()
		if err != nil {
			c.result <- err
			return
		}
		if cl := f.GetCancel(); cl != nil {
			c.mu.Lock()
			if cancel := c.calls[cl.GetId()]; cancel != nil {
				cancel()
			}
			c.mu.Unlock()
			continue
		}
		call := f.GetCall()
		if call == nil {
			continue
		}
		if !c.s.begin() {
			reply := withStatus(&channelv1.Reply{Id: call.GetId()}, status.Convert(errgrpc.Errorf(errdefs.ErrUnavailable, "server is stopping")))
			c.fw.write(context.Background(), &channelv1.Frame{Reply: reply})
			continue
		}
		ctx, cancel := c.s.callContext(c.ctx, call)
		c.mu.Lock()
		c.calls[call.GetId()] = cancel
		c.mu.Unlock()
		c.s.run(c.read)
		c.serve(ctx, cancel, call)
		return
	}
}

// serve runs one call and writes its reply.
func (c *connState) serve(ctx context.Context, cancel context.CancelFunc, call *channelv1.Call) {
	defer c.s.end()
	reply, msg, ip := c.s.handle(ctx, call)
	c.mu.Lock()
	delete(c.calls, call.GetId())
	c.mu.Unlock()
	cancel()
	if ip != nil {
		// The reply's data is the handler's until written (ReplyInPlace).
		defer ip.done()
		if bs, ok := ip.frame(reply, msg, c.fw.max); ok {
			if _, err := c.fw.writeFrame(context.Background(), bs...); err != nil {
				c.s.log.Debug("unary: write reply", "method", call.GetMethod(), "err", err)
			}
			return
		}
		ip.fill(msg)
	}
	_, err := c.fw.writePayload(context.Background(), &channelv1.Frame{Reply: reply}, msg)
	if errors.Is(err, errFrameTooLarge) || errors.Is(err, errUnsendable) {
		// Nothing was written: the caller hears why its reply cannot come
		// instead of waiting for it, as a gRPC client would.
		kind := errdefs.ErrInternal
		if errors.Is(err, errFrameTooLarge) {
			kind = errdefs.ErrResourceExhausted
		}
		st := status.Convert(errgrpc.Errorf(kind, "unary: reply to %s: %v (a frame holds at most %d bytes)", call.GetMethod(), err, maxReply))
		_, err = c.fw.write(context.Background(), &channelv1.Frame{Reply: withStatus(&channelv1.Reply{Id: call.GetId()}, st)})
	}
	if err != nil {
		c.s.log.Debug("unary: write reply", "method", call.GetMethod(), "err", err)
	}
}

// intern returns the name of a registered method equal to b.
func (s *Server) intern(b []byte) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.methods[string(b)]
	return m.name, ok
}

// begin counts a new call in, unless the server is draining.
func (s *Server) begin() bool {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	if s.draining {
		return false
	}
	s.calls++
	return true
}

// end counts a call out once its reply is written.
func (s *Server) end() {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	s.calls--
	if s.calls == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
}

// Drain refuses new calls (Unavailable) and waits until the calls in
// flight have replied or ctx ends.
func (s *Server) Drain(ctx context.Context) error {
	s.callsMu.Lock()
	s.draining = true
	if s.calls == 0 {
		s.callsMu.Unlock()
		return nil
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	drained := s.drained
	s.callsMu.Unlock()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) callContext(ctx context.Context, call *channelv1.Call) (context.Context, context.CancelFunc) {
	if md := fromWire(call.GetMetadata()); md != nil {
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	if t := call.GetTimeoutNanos(); t > 0 {
		return context.WithTimeout(ctx, time.Duration(t))
	}
	return context.WithCancel(ctx)
}

// handle runs one call and returns its reply, and the response message
// to encode as the reply's payload (nil when the call failed): the frame
// writer encodes it into the frame. ip is what the handler registered
// with ReplyInPlace, if anything: its done must be called once the reply
// is written.
func (s *Server) handle(ctx context.Context, call *channelv1.Call) (_ *channelv1.Reply, _ proto.Message, ip *inPlace) {
	reply := &channelv1.Reply{Id: call.GetId()}
	s.mu.RLock()
	m, ok := s.methods[call.GetMethod()]
	s.mu.RUnlock()
	if !ok {
		return withStatus(reply, unknownMethod(call.GetMethod())), nil, nil
	}
	ts := &transportStream{method: call.GetMethod()}
	defer func() { ip = ts.takeInPlace() }()
	ctx = grpc.NewContextWithServerTransportStream(ctx, ts)
	dec := func(v any) error {
		msg, ok := v.(proto.Message)
		if !ok {
			return errgrpc.Errorf(errdefs.ErrInternal, "unary: %T is not a proto message", v)
		}
		// The handler passes a new message; see decode.
		if err := decode(call.GetPayload(), msg); err != nil {
			return errgrpc.Errorf(errdefs.ErrInternal, "unary: bad request: %v", err)
		}
		return nil
	}
	resp, err := m.handler(m.impl, ctx, dec, nil)
	reply.Header, reply.Trailer = ts.wire()
	if err != nil {
		// As gRPC does: an error without a status that is a context's
		// becomes Canceled or DeadlineExceeded, anything else Unknown.
		st, ok := status.FromError(err)
		if !ok {
			st = status.FromContextError(err)
		}
		return withStatus(reply, st), nil, nil
	}
	msg, ok := resp.(proto.Message)
	if !ok {
		return withStatus(reply, status.Convert(errgrpc.Errorf(errdefs.ErrInternal, "unary: %T is not a proto message", resp))), nil, nil
	}
	return reply, msg, nil
}

func unknownMethod(full string) *status.Status {
	service, _, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	return status.Convert(errgrpc.Errorf(errdefs.ErrNotImplemented, "unknown method %s for service %s", full, service))
}

func withStatus(r *channelv1.Reply, st *status.Status) *channelv1.Reply {
	p := st.Proto()
	r.Code = p.GetCode()
	r.Message = p.GetMessage()
	r.Details = p.GetDetails()
	return r
}

// transportStream collects what a handler sets with grpc.SetHeader,
// SendHeader and SetTrailer.
type transportStream struct {
	method  string
	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
	inPlace inPlace // see ReplyInPlace
}

func (t *transportStream) Method() string { return t.method }

func (t *transportStream) SetHeader(md metadata.MD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.header = metadata.Join(t.header, md)
	return nil
}

func (t *transportStream) SendHeader(md metadata.MD) error { return t.SetHeader(md) }

func (t *transportStream) SetTrailer(md metadata.MD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.trailer = metadata.Join(t.trailer, md)
	return nil
}

func (t *transportStream) wire() (header, trailer []*channelv1.Metadata) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return toWire(t.header), toWire(t.trailer)
}
