package unary

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
)

// maitred is a test Maitred: GetKernelVersion echoes metadata, Mount
// fails with details, LaunchProcess blocks until cancelled, SetTimezone
// until released.
type maitred struct {
	vmtools.UnimplementedMaitredServer
	cancelled chan struct{} // closed when the first LaunchProcess ends
	once      sync.Once
	release   chan struct{} // closed to end SetTimezone calls
}

func (m *maitred) SetTimezone(ctx context.Context, req *vmtools.SetTimezoneRequest) (*vmtools.EmptyMessage, error) {
	<-m.release
	grpc.SetHeader(ctx, metadata.Pairs("tz", req.GetTimezoneName()))
	return &vmtools.EmptyMessage{}, nil
}

func (m *maitred) GetKernelVersion(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.GetKernelVersionResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	grpc.SetHeader(ctx, metadata.Pairs("h", "1"))
	grpc.SetTrailer(ctx, metadata.Pairs("t-bin", "\x00\xff"))
	_, hasDeadline := ctx.Deadline()
	v := "no-deadline"
	if hasDeadline {
		v = "deadline"
	}
	if first(md.Get("big")) != "" {
		// A reply larger than the host takes.
		return &vmtools.GetKernelVersionResponse{KernelRelease: strings.Repeat("x", maxReply+1)}, nil
	}
	return &vmtools.GetKernelVersionResponse{KernelRelease: first(md.Get("x")), KernelVersion: v}, nil
}

func (m *maitred) Mount(context.Context, *vmtools.MountRequest) (*vmtools.MountResponse, error) {
	st, _ := status.New(codes.FailedPrecondition, "no").WithDetails(&errdetails.ErrorInfo{Reason: "R"})
	return nil, st.Err()
}

func (m *maitred) LaunchProcess(ctx context.Context, req *vmtools.LaunchProcessRequest) (*vmtools.LaunchProcessResponse, error) {
	if len(req.GetArgv()) == 0 {
		return &vmtools.LaunchProcessResponse{Status: vmtools.ProcessStatus_EXITED}, nil
	}
	<-ctx.Done()
	m.once.Do(func() { close(m.cancelled) })
	return nil, ctx.Err()
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// startBlocked starts a LaunchProcess that blocks in the handler until
// cancelled, and gives it time to get there.
func startBlocked(ctx context.Context, c *Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := vmtools.NewMaitredClient(c).LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: []string{"block"}})
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	return errc
}

// waitCancelled fails t unless the first blocked LaunchProcess's handler
// sees its context cancelled.
func waitCancelled(t *testing.T, m *maitred) {
	t.Helper()
	select {
	case <-m.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler was not cancelled")
	}
}

// socketPair returns the ends of a unix stream socket pair: unlike
// net.Pipe it buffers, as the sockets of the real channel do.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 0 {
				syscall.Close(fds[1])
			} else {
				conns[0].Close()
			}
			return nil, nil, err
		}
	}
	return conns[0], conns[1], nil
}

// streamsOnly stands in for the gRPC connection that streaming calls use.
type streamsOnly struct{ grpc.ClientConnInterface }

func pair(t testing.TB) (*Conn, *maitred, *Server) {
	t.Helper()
	return pairWith(t, nil)
}

// timeoutConn reports its read deadline as yamux streams do, with an
// error of its own rather than os.ErrDeadlineExceeded.
type timeoutConn struct{ net.Conn }

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o deadline reached" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return false }

func (c timeoutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = timeoutError{}
	}
	return n, err
}

// pairWith is pair with the client's end of each stream passed through
// wrap, if not nil.
func pairWith(t testing.TB, wrap func(net.Conn) net.Conn) (*Conn, *maitred, *Server) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := NewServer(log)
	m := &maitred{cancelled: make(chan struct{}), release: make(chan struct{})}
	vmtools.RegisterMaitredServer(srv, m)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	open := func(context.Context) (net.Conn, error) {
		a, b, err := socketPair()
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pre := make([]byte, len(Preface))
			if _, err := io.ReadFull(b, pre); err != nil || string(pre) != Preface {
				b.Close()
				return
			}
			srv.ServeConn(ctx, b)
		}()
		if wrap != nil {
			return wrap(a), nil
		}
		return a, nil
	}
	c := NewConn(open, streamsOnly{})
	t.Cleanup(func() {
		c.Close()
		cancel()
		wg.Wait()
	})
	return c, m, srv
}

func TestCallCarriesMetadataDeadlineHeaderTrailer(t *testing.T) {
	c, _, _ := pair(t)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x", "hello"), time.Minute)
	defer cancel()
	var header, trailer metadata.MD
	resp, err := vmtools.NewMaitredClient(c).GetKernelVersion(ctx, &vmtools.EmptyMessage{}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if resp.KernelRelease != "hello" || resp.KernelVersion != "deadline" {
		t.Errorf("response %v", resp)
	}
	if first(header.Get("h")) != "1" || first(trailer.Get("t-bin")) != "\x00\xff" {
		t.Errorf("header %v trailer %v", header, trailer)
	}
	resp, err = vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{})
	if err != nil || resp.KernelVersion != "no-deadline" {
		t.Errorf("without deadline: %v, %v", resp, err)
	}
}

func TestStatusWithDetails(t *testing.T) {
	c, _, _ := pair(t)
	_, err := vmtools.NewMaitredClient(c).Mount(context.Background(), &vmtools.MountRequest{})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "no" {
		t.Fatalf("status %v", st)
	}
	if d := st.Details(); len(d) != 1 || d[0].(*errdetails.ErrorInfo).GetReason() != "R" {
		t.Errorf("details %v", d)
	}
}

func TestUnknownMethodAndUnimplemented(t *testing.T) {
	c, _, _ := pair(t)
	if _, err := kata.NewHealthClient(c).Check(context.Background(), &kata.CheckRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("unregistered service: %v", err)
	}
	if _, err := vmtools.NewMaitredClient(c).Shutdown(context.Background(), &vmtools.EmptyMessage{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("unimplemented method: %v", err)
	}
}

func TestCancelReachesHandler(t *testing.T) {
	c, m, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := startBlocked(ctx, c)
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("caller got %v", err)
	}
	waitCancelled(t, m)
	// The stream is still good for the next call.
	if _, err := vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{}); err != nil {
		t.Errorf("after a cancel: %v", err)
	}
}

func TestDeadlineExceeded(t *testing.T) {
	c, m, _ := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := vmtools.NewMaitredClient(c).LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: []string{"block"}})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("got %v", err)
	}
	select {
	case <-m.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler outlived the deadline")
	}
}

func TestConcurrentCalls(t *testing.T) {
	c, _, _ := pair(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := string(rune('a' + i%26))
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x", want)
			resp, err := vmtools.NewMaitredClient(c).GetKernelVersion(ctx, &vmtools.EmptyMessage{})
			if err != nil || resp.KernelRelease != want {
				t.Errorf("call %d: %v, %v", i, resp, err)
			}
		}()
	}
	wg.Wait()
}

// TestBlockedCallsDoNotHoldUpOthers leaves more calls blocked on one
// stream than the server has workers; a call made after them still
// answers, and cancelling them ends each.
func TestBlockedCallsDoNotHoldUpOthers(t *testing.T) {
	c, _, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	const blocked = workers + 3
	errc := make(chan error, blocked)
	for range blocked {
		go func() {
			_, err := vmtools.NewMaitredClient(c).LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: []string{"block"}})
			errc <- err
		}()
	}
	time.Sleep(50 * time.Millisecond)
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if _, err := vmtools.NewMaitredClient(c).GetKernelVersion(cctx, &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("call behind %d blocked calls: %v", blocked, err)
	}
	cancel()
	for range blocked {
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Errorf("blocked call ended with %v", err)
		}
	}
}

// TestReadingPassesOn cancels the call reading the stream while another
// waits: the other takes over reading and gets its reply. The streams of
// a socket and of yamux report the deadline that interrupts the reader
// differently; both are tried.
func TestReadingPassesOn(t *testing.T) {
	t.Run("socket", func(t *testing.T) { testReadingPassesOn(t, nil) })
	t.Run("yamux-like", func(t *testing.T) {
		testReadingPassesOn(t, func(c net.Conn) net.Conn { return timeoutConn{c} })
	})
}

func testReadingPassesOn(t *testing.T, wrap func(net.Conn) net.Conn) {
	c, m, _ := pairWith(t, wrap)
	ctx, cancel := context.WithCancel(context.Background())
	reader := startBlocked(ctx, c)
	waiter := make(chan error, 1)
	go func() {
		var header metadata.MD
		_, err := vmtools.NewMaitredClient(c).SetTimezone(context.Background(), &vmtools.SetTimezoneRequest{TimezoneName: "Europe/Paris"}, grpc.Header(&header))
		if err == nil && first(header.Get("tz")) != "Europe/Paris" {
			err = fmt.Errorf("another call's reply: header %v", header)
		}
		waiter <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.mu.Lock()
	inFlight := len(c.cur.pending)
	c.mu.Unlock()
	if inFlight != 2 {
		t.Fatalf("%d calls in flight, want 2", inFlight)
	}
	cancel()
	if err := <-reader; status.Code(err) != codes.Canceled {
		t.Errorf("reading call ended with %v", err)
	}
	close(m.release)
	select {
	case err := <-waiter:
		if err != nil {
			t.Errorf("waiting call: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting call never got its reply: nobody read the stream")
	}
}

// TestLostStreamFailsCallsAndReconnects cuts the stream under a call in
// flight: the call fails Unavailable, and the next call opens a new stream.
func TestLostStreamFailsCallsAndReconnects(t *testing.T) {
	c, m, _ := pair(t)
	errc := startBlocked(context.Background(), c)
	c.mu.Lock()
	c.cur.conn.Close()
	c.mu.Unlock()
	if err := <-errc; status.Code(err) != codes.Unavailable {
		t.Errorf("call on a lost stream: %v", err)
	}
	// The server cancels a call whose stream is gone.
	waitCancelled(t, m)
	if _, err := vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{}); err != nil {
		t.Errorf("after reconnect: %v", err)
	}
}

func TestDrainRefusesNewCallsAndWaits(t *testing.T) {
	c, _, srv := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := startBlocked(ctx, c)
	drained := make(chan error, 1)
	go func() { drained <- srv.Drain(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-drained:
		t.Fatal("Drain returned with a call in flight")
	default:
	}
	_, err := vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("call while draining: %v", err)
	}
	cancel()
	<-errc
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the last call")
	}
}

func TestClosedConn(t *testing.T) {
	c, _, _ := pair(t)
	c.Close()
	_, err := vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), errClosed.Error()) {
		t.Errorf("after Close: %v", err)
	}
}

func BenchmarkCall(b *testing.B) {
	c, _, _ := pair(b)
	client := vmtools.NewMaitredClient(c)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A reply read by another call before its own call got to wait for it is
// taken from the call's channel, not waited for on the stream. Here B
// reads A's reply while A is between send and await, then B's own, and
// leaves nobody reading: A must not read the stream for a reply that has
// come.
func TestReplyBeforeAwait(t *testing.T) {
	c, m, _ := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// B blocks in the guest and reads the stream meanwhile.
	b := make(chan error, 1)
	go func() {
		_, err := vmtools.NewMaitredClient(c).SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: "UTC"})
		b <- err
	}()
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.cur != nil && c.cur.reading
	})
	// A is sent, and its reply read by B, before A awaits it.
	payload, err := proto.Marshal(&vmtools.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	call := &channelv1.Call{Method: "/vm_tools.Maitred/GetKernelVersion", Payload: payload}
	cs, ch, err := c.send(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(ch) == 1 })
	close(m.release)
	if err := <-b; err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 2*time.Second)
	defer acancel()
	r, err := c.await(actx, cs, call.Id, ch)
	if err != nil {
		t.Fatalf("await of a reply already delivered = %v", err)
	}
	if r.GetCode() != 0 {
		t.Fatalf("reply code %d: %s", r.GetCode(), r.GetMessage())
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A request too large for a frame fails alone, as ResourceExhausted: it
// was refused before a byte was written, so the stream and the calls on it
// carry on.
func TestOversizedRequestFailsAlone(t *testing.T) {
	c, m, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	blocked := startBlocked(ctx, c)
	_, err := vmtools.NewMaitredClient(c).SetTimezone(context.Background(),
		&vmtools.SetTimezoneRequest{TimezoneName: strings.Repeat("z", maxFrame+1)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized request = %v, want ResourceExhausted", err)
	}
	select {
	case err := <-blocked:
		t.Fatalf("a call in flight ended with the oversized one: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := vmtools.NewMaitredClient(c).GetKernelVersion(context.Background(), &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("call after the oversized one: %v", err)
	}
	cancel()
	waitCancelled(t, m)
}

// A reply too large for the host reaches its caller as ResourceExhausted,
// at once, not as a wait until its deadline, nor as a lost stream.
func TestOversizedReplyFails(t *testing.T) {
	c, _, _ := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := vmtools.NewMaitredClient(c).GetKernelVersion(metadata.AppendToOutgoingContext(ctx, "big", "1"), &vmtools.EmptyMessage{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized reply = %v after %v, want ResourceExhausted", err, time.Since(start))
	}
	if _, err := vmtools.NewMaitredClient(c).GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("call after the oversized reply: %v", err)
	}
}

// portSim stands in for a virtio-serial port in the guest: one device
// that hosts hold in turn. A session reads what its own host sends, and
// EOF once that host has gone; but what the guest writes reaches whichever
// host holds the port when it is written, as on the device.
type portSim struct {
	mu   sync.Mutex
	host net.Conn // the guest's end of the current host's socket
}

// connect makes a new host hold the port. It returns the host's end and
// the guest's session.
func (p *portSim) connect(t *testing.T) (net.Conn, *portSession) {
	t.Helper()
	h, g, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); g.Close() })
	p.mu.Lock()
	p.host = g
	p.mu.Unlock()
	return h, &portSession{Conn: g, p: p, done: make(chan struct{})}
}

// portSession is one host's session on a portSim. Like the agent's,
// closing it ends its reads and writes, not the port.
type portSession struct {
	net.Conn // the session's own host: reads and addresses
	p        *portSim
	once     sync.Once
	done     chan struct{}
}

func (s *portSession) Write(b []byte) (int, error) {
	select {
	case <-s.done:
		return 0, io.ErrClosedPipe
	default:
	}
	s.p.mu.Lock()
	h := s.p.host
	s.p.mu.Unlock()
	return h.Write(b)
}

func (s *portSession) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.Conn.SetReadDeadline(time.Now())
	})
	return nil
}

// TestLateReplyDoesNotReachNextHost: a host goes while a call of its
// runs and ignores cancellation, another host comes at once, and then the
// call ends. Its reply must not reach the new host, where it would answer
// the new host's first call, which has the same id.
func TestLateReplyDoesNotReachNextHost(t *testing.T) {
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	m := &maitred{release: make(chan struct{})}
	vmtools.RegisterMaitredServer(srv, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var port portSim

	host1, guest1 := port.connect(t)
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, guest1) }()
	call := func(host net.Conn, method string, req proto.Message, md ...*channelv1.Metadata) {
		t.Helper()
		payload, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		f := &channelv1.Frame{Call: &channelv1.Call{Id: 1, Method: method, Payload: payload, Metadata: md}}
		if _, err := newFrameWriter(host, maxFrame).write(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	// SetTimezone blocks until released, cancelled or not.
	call(host1, "/vm_tools.Maitred/SetTimezone", &vmtools.SetTimezoneRequest{TimezoneName: "UTC"})
	waitFor(t, func() bool {
		srv.callsMu.Lock()
		defer srv.callsMu.Unlock()
		return srv.calls == 1
	})
	host1.Close()
	// The guest sees the host go and closes the session. (Were it not to,
	// the test goes on after a second, and fails below.)
	select {
	case <-guest1.done:
	case <-time.After(time.Second):
	}

	// ServeConn returns though the call still runs: the next host need
	// not wait for it.
	select {
	case <-served:
	case <-ctx.Done():
		t.Fatal("ServeConn did not return once its host had gone")
	}
	host2, guest2 := port.connect(t)
	go func() { served <- srv.ServeConn(ctx, guest2) }()
	defer func() {
		cancel()
		<-served
	}()
	// The call ends, and its reply would be written, while the new host
	// holds the port.
	close(m.release)
	waitFor(t, func() bool {
		srv.callsMu.Lock()
		defer srv.callsMu.Unlock()
		return srv.calls == 0
	})
	call(host2, "/vm_tools.Maitred/GetKernelVersion", &vmtools.EmptyMessage{}, &channelv1.Metadata{Key: "x", Values: [][]byte{[]byte("host2")}})
	host2.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := newFrameReader(host2, maxReply).read()
	if err != nil {
		t.Fatal(err)
	}
	var resp vmtools.GetKernelVersionResponse
	if err := proto.Unmarshal(f.GetReply().GetPayload(), &resp); err != nil || resp.GetKernelRelease() != "host2" {
		t.Fatalf("the new host's first reply is %v (%v), not to its own call", f, err)
	}
}

// stalled returns a Conn whose streams go to a peer that never reads, as
// a paused VM does, the count of streams it opened, and a function that
// returns how many bytes wait unread at the newest stream's peer.
func stalled(t *testing.T) (*Conn, *atomic.Int32, func() int) {
	var (
		opened atomic.Int32
		mu     sync.Mutex
		peers  []net.Conn
	)
	open := func(context.Context) (net.Conn, error) {
		a, b, err := socketPair()
		if err != nil {
			return nil, err
		}
		opened.Add(1)
		mu.Lock()
		peers = append(peers, b)
		mu.Unlock()
		return a, nil
	}
	c := NewConn(open, streamsOnly{})
	t.Cleanup(func() {
		c.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, p := range peers {
			p.Close()
		}
	})
	queued := func() int {
		mu.Lock()
		defer mu.Unlock()
		if len(peers) == 0 {
			return 0
		}
		raw, err := peers[len(peers)-1].(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return c, &opened, queued
}

// setTimezone calls SetTimezone with name on a goroutine; a name of
// megabytes is more than a socket buffers.
func setTimezone(ctx context.Context, c *Conn, name string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := vmtools.NewMaitredClient(c).SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: name})
		errc <- err
	}()
	return errc
}

// within returns what errc gives, failing t if it takes longer than d.
func within(t *testing.T, errc <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
		return nil
	}
}

// A request the peer does not take fails when its context ends, though
// its write has not. Written in part, it leaves the stream corrupt: the
// stream is lost, failing the other calls on it Unavailable, and the next
// call opens another.
func TestWriteHonoursContext(t *testing.T) {
	c, opened, queued := stalled(t)
	waiting := setTimezone(context.Background(), c, "UTC")
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.cur != nil && c.cur.reading
	})
	first := queued()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	big := setTimezone(ctx, c, strings.Repeat("z", 4<<20))
	// Ended once part of the request is out: the stream is then corrupt.
	waitFor(t, func() bool { return queued() > first })
	cancel()
	if err := within(t, big, 5*time.Second, "a call whose request the peer does not read"); status.Code(err) != codes.Canceled {
		t.Fatalf("call = %v, want Canceled", err)
	}
	if err := within(t, waiting, 5*time.Second, "the call waiting on the corrupt stream"); status.Code(err) != codes.Unavailable {
		t.Errorf("call waiting on the corrupt stream = %v, want Unavailable", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	within(t, setTimezone(ctx, c, "UTC"), 5*time.Second, "the next call")
	if n := opened.Load(); n != 2 {
		t.Errorf("%d streams opened, want 2", n)
	}
}

// A call waiting to write behind a write that does not end fails at its
// own deadline, leaving the stream as it was.
func TestWaitToWriteHonoursDeadline(t *testing.T) {
	c, opened, _ := stalled(t)
	stuck := setTimezone(context.Background(), c, strings.Repeat("z", 4<<20))
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.cur != nil && len(c.cur.fw.lock) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := within(t, setTimezone(ctx, c, "UTC"), 5*time.Second, "a call behind a stuck write"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call = %v, want DeadlineExceeded", err)
	}
	c.Close()
	if err := within(t, stuck, 5*time.Second, "the stuck call after Close"); status.Code(err) != codes.Unavailable {
		t.Errorf("stuck call after Close = %v, want Unavailable", err)
	}
	if n := opened.Load(); n != 1 {
		t.Errorf("%d streams opened, want 1", n)
	}
}

// A call whose context ends while it waits for its reply returns at once,
// though the Cancel it sends the server cannot be written yet.
func TestCancelDoesNotHoldUpCaller(t *testing.T) {
	c, _, _ := stalled(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	waiting := setTimezone(ctx, c, "UTC")
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.cur != nil && c.cur.reading
	})
	// This write holds the stream until Close.
	stuck := setTimezone(context.Background(), c, strings.Repeat("z", 4<<20))
	if err := within(t, waiting, 5*time.Second, "a call past its deadline"); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call = %v, want DeadlineExceeded", err)
	}
	c.Close()
	within(t, stuck, 5*time.Second, "the stuck call after Close")
}

// A stream that takes long to open (a connect to a socket whose backlog is
// full) holds up no call past its context: neither the one opening it nor
// those that wait for it.
func TestOpenHonoursContext(t *testing.T) {
	var opens atomic.Int32
	refuse := make(chan struct{})
	c := NewConn(func(ctx context.Context) (net.Conn, error) {
		opens.Add(1)
		select {
		case <-refuse:
			return nil, errors.New("connection refused")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, streamsOnly{})
	defer c.Close()

	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	first := setTimezone(ctx1, c, "UTC")
	waitFor(t, func() bool { return opens.Load() == 1 })
	// Its deadline comes while it waits.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	second := setTimezone(ctx2, c, "UTC")
	if err := within(t, second, 5*time.Second, "a call waiting for another's open"); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call waiting for another's open = %v, want DeadlineExceeded", err)
	}
	cancel1()
	if err := within(t, first, 5*time.Second, "the call opening the stream"); status.Code(err) != codes.Canceled {
		t.Errorf("call opening the stream = %v, want Canceled", err)
	}
	close(refuse)
	ctx3, cancel3 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel3()
	if err := within(t, setTimezone(ctx3, c, "UTC"), 5*time.Second, "a call after"); status.Code(err) != codes.Unavailable {
		t.Errorf("call when the open fails = %v, want Unavailable", err)
	}
	if n := opens.Load(); n != 2 {
		t.Errorf("%d opens, want 2: the waiting call does not open one of its own", n)
	}
}

// Close cuts short a stream being opened, and the calls waiting for it
// fail at once.
func TestCloseDuringOpen(t *testing.T) {
	var opens atomic.Int32
	c := NewConn(func(ctx context.Context) (net.Conn, error) {
		opens.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}, streamsOnly{})
	first := setTimezone(context.Background(), c, "UTC")
	waitFor(t, func() bool { return opens.Load() == 1 })
	second := setTimezone(context.Background(), c, "UTC")
	c.Close()
	for what, errc := range map[string]<-chan error{"opening": first, "waiting": second} {
		if err := within(t, errc, 5*time.Second, "a call "+what+" when the Conn closed"); status.Code(err) != codes.Unavailable {
			t.Errorf("call %s when the Conn closed = %v, want Unavailable", what, err)
		}
	}
}
