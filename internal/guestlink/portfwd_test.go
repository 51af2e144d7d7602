package guestlink

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	portfwdv1 "github.com/cabinvm/cabin/api/cabin/portfwd/v1"
	"github.com/cabinvm/cabin/internal/grpctest"
)

// guestPorts is an agent's GuestPorts as the host meets it: port 7 reads
// all a TCP client sends and answers it in capitals, then eof; UDP port 7
// echoes datagrams; port 9 never answers; any other is refused.
type guestPorts struct {
	portfwdv1.UnimplementedGuestPortsServer
	ended chan error // how each call ended, as the guest saw it
}

func (g *guestPorts) Connect(stream portfwdv1.GuestPorts_ConnectServer) error {
	err := g.connect(stream)
	g.ended <- err
	return err
}

func (g *guestPorts) connect(stream portfwdv1.GuestPorts_ConnectServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	switch req.GetOpen().GetPort() {
	case 7:
	case 9:
		<-stream.Context().Done()
		return stream.Context().Err()
	default:
		return status.Error(codes.Unavailable, "connection refused")
	}
	if err := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Opened{Opened: &portfwdv1.GuestPortOpened{}}}); err != nil {
		return err
	}
	if req.GetOpen().GetUdp() {
		for {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Data{Data: req.GetData()}}); err != nil {
				return err
			}
		}
	}
	var all bytes.Buffer
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if n := len(req.GetData()); n > portfwdv1.MaxChunk {
			return status.Errorf(codes.InvalidArgument, "a chunk of %d bytes", n)
		}
		all.Write(req.GetData())
	}
	for chunk := range slices.Chunk(bytes.ToUpper(all.Bytes()), 1000) {
		if err := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Data{Data: chunk}}); err != nil {
			return err
		}
	}
	return stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Eof{Eof: &portfwdv1.GuestPortEOF{}}})
}

func serveGuestPorts(t *testing.T) (grpc.ClientConnInterface, *guestPorts) {
	g := &guestPorts{ended: make(chan error, 16)}
	cc := grpctest.Serve(t, func(s *grpc.Server) { portfwdv1.RegisterGuestPortsServer(s, g) })
	return cc, g
}

func TestDialPortTCP(t *testing.T) {
	cc, _ := serveGuestPorts(t)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := DialPort(ctx, cc, "tcp", 7)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The dial's context bounds the dial only.
	cancel()
	msg := strings.Repeat("abcdefgh", 20000)
	if n, err := c.Write([]byte(msg)); err != nil || n != len(msg) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("more")); err == nil {
		t.Error("write after CloseWrite succeeded")
	}
	// Small reads take a message in parts.
	var got bytes.Buffer
	buf := make([]byte, 333)
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if got.String() != strings.ToUpper(msg) {
		t.Errorf("read %d bytes back, want %d in capitals", got.Len(), len(msg))
	}
	if c.RemoteAddr().String() != "guest:7" || c.RemoteAddr().Network() != "tcp" {
		t.Errorf("remote address %s/%s", c.RemoteAddr().Network(), c.RemoteAddr())
	}
}

func TestDialPortUDP(t *testing.T) {
	cc, _ := serveGuestPorts(t)
	c, err := DialPort(context.Background(), cc, "udp", 7)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, msg := range []string{"one", "", strings.Repeat("x", 60000)} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("sent %d bytes, read %d back: %v", len(msg), n, err)
		}
	}
	// Whole datagrams, each in a buffer of its own, for a UDP forward.
	c.Write([]byte(strings.Repeat("y", 40000)))
	if d, err := c.(interface{ ReadDatagram() ([]byte, error) }).ReadDatagram(); err != nil || string(d) != strings.Repeat("y", 40000) {
		t.Errorf("ReadDatagram: %d bytes, %v", len(d), err)
	}
	// A datagram larger than the read is cut, as from a socket.
	c.Write([]byte("truncated"))
	c.Write([]byte("next"))
	buf := make([]byte, 5)
	if n, _ := c.Read(buf); string(buf[:n]) != "trunc" {
		t.Errorf("first read %q", buf[:n])
	}
	if n, _ := c.Read(buf); string(buf[:n]) != "next" {
		t.Errorf("second read %q: want the next datagram", buf[:n])
	}
}

func TestDialPortFailures(t *testing.T) {
	cc, g := serveGuestPorts(t)
	if _, err := DialPort(context.Background(), cc, "tcp", 8); status.Code(err) != codes.Unavailable {
		t.Errorf("refused port: %v, want the guest's Unavailable", err)
	}
	<-g.ended
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := DialPort(ctx, cc, "tcp", 9); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a guest that does not answer: %v, want the dial's deadline", err)
	}
	select {
	case <-g.ended:
	case <-time.After(5 * time.Second):
		t.Error("the call outlived a dial given up")
	}
	for _, p := range []int{0, 65536} {
		if _, err := DialPort(context.Background(), cc, "tcp", p); err == nil || !strings.Contains(err.Error(), "port") {
			t.Errorf("port %d: %v", p, err)
		}
	}
	if _, err := DialPort(context.Background(), cc, "sctp", 7); err == nil {
		t.Error("sctp dialled")
	}

	// Close ends the call; reads and writes then fail as on a closed
	// socket.
	c, err := DialPort(context.Background(), cc, "tcp", 7)
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	c.Close()
	if err := <-read; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read across Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v, want net.ErrClosed", err)
	}
	select {
	case err := <-g.ended:
		if status.Code(err) != codes.Canceled {
			t.Errorf("the guest saw the call end with %v, want canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the call outlived Close")
	}
}
