package guestlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	portfwdv1 "github.com/cabinvm/cabin/api/cabin/portfwd/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// DialPort connects to port ("tcp" or "udp") on the guest's 127.0.0.1
// through its agent (cabin.v1.GuestPorts), as net.Dial would: ctx bounds
// the dial, waiting for the agent among it, not the connection.
func (l *Link) DialPort(ctx context.Context, proto string, port int) (net.Conn, error) {
	cc, err := l.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return DialPort(ctx, cc, proto, port)
}

// DialPort connects to port ("tcp" or "udp") on the 127.0.0.1 of the
// agent cc reaches: a connection carried on one GuestPorts.Connect call.
// It returns once the agent has connected. A UDP connection carries one
// datagram per Read and Write; a TCP one can half-close (CloseWrite).
func DialPort(ctx context.Context, cc grpc.ClientConnInterface, proto string, port int) (net.Conn, error) {
	if proto != "tcp" && proto != "udp" {
		return nil, errdefs.InvalidArgument("protocol", fmt.Sprintf("%q is neither tcp nor udp", proto))
	}
	if port < 1 || port > 65535 {
		return nil, errdefs.InvalidArgument("port", fmt.Sprintf("%d is not 1 to 65535", port))
	}
	// The call lasts as long as the connection: ctx only until the guest
	// has connected.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	fail := func(err error) (net.Conn, error) {
		stop()
		cancel()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to guest %s port %d: %w", proto, port, ctx.Err())
		}
		return nil, err
	}
	stream, err := portfwdv1.NewGuestPortsClient(cc).Connect(sctx)
	if err != nil {
		return fail(err)
	}
	open := &portfwdv1.GuestPortOpen{Port: uint32(port), Udp: proto == "udp"}
	if err := stream.Send(&portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: open}}); err != nil {
		// Recv says why the call ended.
		_, err = stream.Recv()
		return fail(err)
	}
	resp, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("connect to guest %s port %d: the agent ended the call: %w", proto, port, errdefs.ErrInternal)
	}
	if err != nil {
		return fail(err)
	}
	if resp.GetOpened() == nil {
		return fail(fmt.Errorf("connect to guest %s port %d: the agent's first answer is not opened: %w", proto, port, errdefs.ErrInternal))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	return &portConn{
		stream: stream, cancel: cancel, udp: proto == "udp",
		remote: portAddr{network: proto, port: port},
	}, nil
}

// portConn is a connection to a guest port carried on a GuestPorts call.
type portConn struct {
	stream portfwdv1.GuestPorts_ConnectClient
	cancel context.CancelFunc
	udp    bool
	remote portAddr
	closed atomic.Bool

	rmu  sync.Mutex
	rbuf []byte // what the last message held beyond what Read took
	rerr error  // why reading ended

	wmu     sync.Mutex
	wclosed bool
}

// Read reads the stream's next bytes, or the next datagram (what p
// cannot hold of it is lost, as with a UDP socket).
func (c *portConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.rbuf) > 0 {
		n := copy(p, c.rbuf)
		c.rbuf = c.rbuf[n:]
		return n, nil
	}
	for c.rerr == nil {
		resp, err := c.stream.Recv()
		if err != nil {
			c.rerr = c.callErr(err)
			break
		}
		switch k := resp.GetKind().(type) {
		case *portfwdv1.GuestPortResponse_Data:
			n := copy(p, k.Data)
			if c.udp {
				return n, nil
			}
			if len(k.Data) == 0 {
				continue
			}
			c.rbuf = k.Data[n:]
			return n, nil
		case *portfwdv1.GuestPortResponse_Eof:
			c.rerr = io.EOF
		}
	}
	return 0, c.rerr
}

// ReadDatagram reads the next datagram whole, in a buffer of its own: a
// UDP forward's flows then keep no buffer of the largest size each.
func (c *portConn) ReadDatagram() ([]byte, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for c.rerr == nil {
		resp, err := c.stream.Recv()
		if err != nil {
			c.rerr = c.callErr(err)
			break
		}
		if k, ok := resp.GetKind().(*portfwdv1.GuestPortResponse_Data); ok {
			return k.Data, nil
		}
	}
	return nil, c.rerr
}

// callErr is what reading or writing says once the call has ended with
// err.
func (c *portConn) callErr(err error) error {
	switch {
	case c.closed.Load():
		return net.ErrClosed
	case errors.Is(err, io.EOF):
		// The guest ended the call without a word: its side is done.
		return io.EOF
	}
	return err
}

// Write sends p: the stream's next bytes, or one datagram.
func (c *portConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed || c.closed.Load() {
		return 0, net.ErrClosed
	}
	if c.udp {
		if err := c.send(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+portfwdv1.MaxChunk)]
		if err := c.send(chunk); err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}

// send sends one message of data, a copy: gRPC may read a message after
// SendMsg returns, and the caller reuses p.
func (c *portConn) send(data []byte) error {
	msg := &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Data{Data: append([]byte{}, data...)}}
	if err := c.stream.Send(msg); err != nil {
		if errors.Is(err, io.EOF) {
			// The call has ended; Read reports its status.
			err = fmt.Errorf("the guest's end has gone: %w", io.ErrClosedPipe)
		}
		return c.callErr(err)
	}
	return nil
}

// CloseWrite ends what is sent to the guest: its socket is half-closed.
func (c *portConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return nil
	}
	c.wclosed = true
	return c.stream.CloseSend()
}

// Close ends the call, and with it the guest's socket.
func (c *portConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.cancel()
	return nil
}

func (c *portConn) LocalAddr() net.Addr  { return portAddr{network: c.remote.network} }
func (c *portConn) RemoteAddr() net.Addr { return c.remote }

// Deadlines are not kept: a forward ends its connections by closing them.
func (c *portConn) SetDeadline(time.Time) error      { return errNoDeadlines }
func (c *portConn) SetReadDeadline(time.Time) error  { return errNoDeadlines }
func (c *portConn) SetWriteDeadline(time.Time) error { return errNoDeadlines }

var errNoDeadlines = fmt.Errorf("guest port connections keep no deadlines: %w", errors.ErrUnsupported)

// portAddr is the guest's end of a port connection.
type portAddr struct {
	network string
	port    int
}

func (a portAddr) Network() string { return a.network }

func (a portAddr) String() string {
	if a.port == 0 {
		return "cabin-channel"
	}
	return "guest:" + strconv.Itoa(a.port)
}
