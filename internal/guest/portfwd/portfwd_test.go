package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	portfwdv1 "github.com/cabinvm/cabin/api/cabin/portfwd/v1"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// client serves the service in memory and returns a client of it.
func client(t *testing.T) portfwdv1.GuestPortsClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	portfwdv1.RegisterGuestPortsServer(srv, New(quiet))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("passthrough:///guest",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return portfwdv1.NewGuestPortsClient(cc)
}

// listenTCP serves handle for each connection to a port of the loopback,
// and returns the port.
func listenTCP(t *testing.T, handle func(net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// open connects to port and waits for opened.
func open(t *testing.T, c portfwdv1.GuestPortsClient, port int, udp bool) portfwdv1.GuestPorts_ConnectClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	stream, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, stream, &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: &portfwdv1.GuestPortOpen{Port: uint32(port), Udp: udp}}})
	resp, err := stream.Recv()
	if err != nil || resp.GetOpened() == nil {
		t.Fatalf("open: %v, %v; want opened", resp, err)
	}
	return stream
}

func send(t *testing.T, stream portfwdv1.GuestPorts_ConnectClient, req *portfwdv1.GuestPortRequest) {
	t.Helper()
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
}

func data(b string) *portfwdv1.GuestPortRequest {
	return &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Data{Data: []byte(b)}}
}

// readAll reads the data the guest sends until eof or the call's end, and
// says which ended it.
func readAll(stream portfwdv1.GuestPorts_ConnectClient) (got string, eof bool, err error) {
	var b strings.Builder
	for {
		resp, err := stream.Recv()
		if err != nil {
			return b.String(), false, err
		}
		switch k := resp.GetKind().(type) {
		case *portfwdv1.GuestPortResponse_Data:
			b.Write(k.Data)
		case *portfwdv1.GuestPortResponse_Eof:
			return b.String(), true, nil
		}
	}
}

// The host's half-close reaches the guest's socket, which answers after
// it; the guest's comes back as eof, and the call ends once both are done.
func TestTCPBothWaysWithHalfClose(t *testing.T) {
	c := client(t)
	port := listenTCP(t, func(conn net.Conn) {
		req, _ := io.ReadAll(conn)
		conn.Write([]byte(strings.ToUpper(string(req))))
	})
	stream := open(t, c, port, false)
	big := strings.Repeat("abc", 50000)
	send(t, stream, data(big))
	send(t, stream, data("!"))
	stream.CloseSend()
	got, eof, err := readAll(stream)
	if err != nil || !eof || got != strings.ToUpper(big)+"!" {
		t.Fatalf("got %d bytes, eof %v, err %v", len(got), eof, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after both sides are done: %v, want the call to end well", err)
	}

	// The guest's side half-closes first, and still reads.
	late := make(chan string, 1)
	port = listenTCP(t, func(conn net.Conn) {
		conn.Write([]byte("hello"))
		conn.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(conn)
		late <- string(b)
	})
	stream = open(t, c, port, false)
	if got, eof, err := readAll(stream); err != nil || !eof || got != "hello" {
		t.Fatalf("got %q, eof %v, err %v", got, eof, err)
	}
	send(t, stream, data("after your eof"))
	stream.CloseSend()
	if got := <-late; got != "after your eof" {
		t.Errorf("the guest read %q after its half-close", got)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("the call ended with %v", err)
	}
}

// Datagrams keep their bounds, an empty one among them.
func TestUDP(t *testing.T) {
	c := client(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	stream := open(t, c, pc.LocalAddr().(*net.UDPAddr).Port, true)
	for _, msg := range []string{"one", "", strings.Repeat("x", 60000), "two"} {
		send(t, stream, data(msg))
		resp, err := stream.Recv()
		if err != nil || resp.GetKind() == nil || string(resp.GetData()) != msg {
			t.Fatalf("sent %d bytes, got %d back (%v)", len(msg), len(resp.GetData()), err)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after the host's end: %v, want the call to end well", err)
	}
}

func TestRefusals(t *testing.T) {
	c := client(t)
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	for _, tc := range []struct {
		name  string
		first *portfwdv1.GuestPortRequest
		want  codes.Code
		words string
	}{
		{"nothing listens", &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: &portfwdv1.GuestPortOpen{Port: uint32(closed)}}}, codes.Unavailable, "refused"},
		{"port 0", &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: &portfwdv1.GuestPortOpen{}}}, codes.InvalidArgument, "port"},
		{"port 65536", &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: &portfwdv1.GuestPortOpen{Port: 65536}}}, codes.InvalidArgument, "65536"},
		{"data first", data("x"), codes.InvalidArgument, "open"},
	} {
		stream, err := c.Connect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(tc.first)
		_, err = stream.Recv()
		if st, _ := status.FromError(err); st.Code() != tc.want || !strings.Contains(st.Message(), tc.words) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.want, tc.words)
		}
	}
}

// The host going away closes the guest's socket.
func TestHostGoneClosesTheSocket(t *testing.T) {
	c := client(t)
	ended := make(chan error, 1)
	port := listenTCP(t, func(conn net.Conn) {
		_, err := io.ReadAll(conn)
		ended <- err
	})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, stream, &portfwdv1.GuestPortRequest{Kind: &portfwdv1.GuestPortRequest_Open{Open: &portfwdv1.GuestPortOpen{Port: uint32(port)}}})
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest's socket outlived the call")
	}
}

// In a guest whose loopback is down, as the agent (PID 1) finds it, the
// first connection brings it up. Run in a network namespace of the
// test's own.
func TestLoopbackBroughtUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace of its own")
	}
	errc := make(chan error, 1)
	go func() {
		// The thread stays in the namespace, and ends with the
		// goroutine: it is never unlocked.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			errc <- err
			return
		}
		defer ln.Close()
		if c, err := net.Dial("tcp", ln.Addr().String()); !errors.Is(err, unix.ENETUNREACH) {
			if c != nil {
				c.Close()
			}
			errc <- fmt.Errorf("the new namespace's loopback is up already: %v", err)
			return
		}
		s := New(quiet)
		conn, err := s.dial(context.Background(), "tcp", ln.Addr().(*net.TCPAddr).Port)
		if err == nil {
			conn.Close()
		}
		errc <- err
	}()
	if err := <-errc; errors.Is(err, unix.EPERM) {
		t.Skipf("cannot make a network namespace here: %v", err)
	} else if err != nil {
		t.Fatalf("dial with the loopback down: %v", err)
	}
}
