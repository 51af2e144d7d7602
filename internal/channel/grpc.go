package channel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cabinvm/cabin/internal/unary"
)

// window is the HTTP/2 flow-control window gRPC uses on a session, per
// stream and per connection. Setting it turns off gRPC's bandwidth-delay
// probing, which would otherwise send a PING (and wake the guest for its
// ack) on almost every call; on a virtio-serial port every frame costs a
// guest exit.
const window = 1 << 20

// streamWriteBuffer is how much gRPC gathers before it writes to a
// session's stream, and so the largest yamux frame it makes: one whole
// port write (portWrite) with the yamux header that the coalescer puts in
// front. gRPC's default, 32 KiB, made each frame 32 KiB and 12 bytes, two
// writes to the port, the second of 12 bytes, and a write costs the guest
// an exit and the host a wake-up whatever its size. Eight port writes'
// worth cost the agent 1 MiB of RSS (gRPC takes the buffer from its 1 MiB
// pool class) for no speed that showed (decisions §31).
const streamWriteBuffer = portWrite - headerSize

// Server serves gRPC services across sessions: unary calls arrive framed by
// package unary, streaming calls (and any gRPC client) as gRPC over HTTP/2,
// each on streams of their own.
type Server struct {
	grpc  *grpc.Server
	unary *unary.Server
	ctx   context.Context
	stop  context.CancelFunc
}

// NewServer returns a Server; opts are added to the gRPC server's.
func NewServer(log *slog.Logger, opts ...grpc.ServerOption) *Server {
	ctx, stop := context.WithCancel(context.Background())
	return &Server{
		grpc: grpc.NewServer(append([]grpc.ServerOption{
			grpc.InitialWindowSize(window),
			grpc.InitialConnWindowSize(window),
			grpc.WriteBufferSize(streamWriteBuffer),
		}, opts...)...),
		unary: unary.NewServer(log),
		ctx:   ctx,
		stop:  stop,
	}
}

// RegisterService registers a service for both kinds of call. It
// implements grpc.ServiceRegistrar.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.unary.Registrar(s.grpc).RegisterService(desc, impl)
}

// Serve serves the streams accepted from l (a Session, or any listener of
// such streams) until l fails or the server stops.
func (s *Server) Serve(l net.Listener) error {
	return s.grpc.Serve(s.split(l))
}

// GracefulStop refuses new calls and waits for the calls in flight, unary
// and streaming, to end.
func (s *Server) GracefulStop() {
	s.unary.Drain(s.ctx)
	s.stop()
	s.grpc.GracefulStop()
}

// Stop stops the server at once, cancelling the calls in flight; it also
// ends a GracefulStop under way.
func (s *Server) Stop() {
	s.stop()
	s.grpc.Stop()
}

// split serves the unary-call streams accepted from l and passes the
// others on. Telling them apart takes the stream's first byte, which is
// read in a goroutine of the stream's own, so a quiet stream holds up no
// other.
func (s *Server) split(l net.Listener) net.Listener {
	sl := &splitListener{Listener: l, conns: make(chan net.Conn), done: make(chan struct{})}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				sl.fail(err)
				return
			}
			go s.route(sl, c)
		}
	}()
	return sl
}

func (s *Server) route(sl *splitListener, c net.Conn) {
	first := make([]byte, 1)
	if _, err := io.ReadFull(c, first); err != nil {
		c.Close()
		return
	}
	if first[0] != unary.Preface[0] {
		select {
		case sl.conns <- &prefixedConn{Conn: c, r: io.MultiReader(bytes.NewReader(first), c)}:
		case <-sl.done:
			c.Close()
		}
		return
	}
	s.serveUnary(c, first)
	c.Close()
}

// ServeUnary serves the unary calls arriving on conn, which carries nothing
// else (the agent's RPC port), until it fails or the server stops.
func (s *Server) ServeUnary(conn net.Conn) error {
	return s.serveUnary(conn, nil)
}

// serveUnary checks the preface (of which the first bytes may have been
// read already) and serves conn.
func (s *Server) serveUnary(conn net.Conn, read []byte) error {
	rest := make([]byte, len(unary.Preface)-len(read))
	if _, err := io.ReadFull(conn, rest); err != nil {
		return err
	}
	if string(read)+string(rest) != unary.Preface {
		return errBadPreface
	}
	return s.unary.ServeConn(s.ctx, conn)
}

var errBadPreface = errors.New("channel: stream did not open with the unary preface")

// splitListener hands on the streams that are not unary-call streams.
type splitListener struct {
	net.Listener
	conns chan net.Conn
	once  sync.Once
	err   error
	done  chan struct{}
}

func (l *splitListener) fail(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

func (l *splitListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *splitListener) Close() error {
	l.fail(net.ErrClosed)
	return l.Listener.Close()
}

// prefixedConn is a connection whose first bytes were already read.
type prefixedConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Client calls the services across a session: unary calls framed by
// package unary, streaming calls as gRPC.
type Client struct {
	grpc.ClientConnInterface
	unary *unary.Conn
	grpc  *grpc.ClientConn
}

// Dial returns a Client whose streaming calls go over streams of sess.
// Unary calls go over a stream of sess too when rpcSocket is empty, else
// over that unix socket (a VM's RPC port), reconnected after a failure. A
// VM launched before it had an RPC port has no such socket: its unary calls
// go as gRPC over the session, which every agent serves. It connects
// lazily, on the first call.
func Dial(sess *Session, rpcSocket string) (*Client, error) {
	cc, err := grpc.NewClient("passthrough:///cabin-channel",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return sess.Open() }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(window),
		grpc.WithInitialConnWindowSize(window),
	)
	if err != nil {
		return nil, err
	}
	c := &Client{ClientConnInterface: cc, grpc: cc}
	// yamux opens a stream without a context; it waits only when
	// hundreds of streams are unacknowledged.
	open := func(context.Context) (net.Conn, error) { return sess.Open() }
	if rpcSocket != "" {
		if _, err := os.Stat(rpcSocket); err != nil {
			return c, nil
		}
		// A connect to a socket whose backlog is full waits, for as long
		// as the call may.
		open = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", rpcSocket)
		}
	}
	c.unary = unary.NewConn(open, cc)
	c.ClientConnInterface = c.unary
	return c, nil
}

// Close closes both connections.
func (c *Client) Close() error {
	if c.unary != nil {
		c.unary.Close()
	}
	return c.grpc.Close()
}
