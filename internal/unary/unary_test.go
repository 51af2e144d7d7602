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
	"syscall"
	"testing"
	"time"

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
		// A reply no frame can hold.
		return &vmtools.GetKernelVersionResponse{KernelRelease: strings.Repeat("x", maxFrame+1)}, nil
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
	open := func() (net.Conn, error) {
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
	cs, ch, err := c.send(call)
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

// A reply too large for a frame reaches its caller as ResourceExhausted,
// at once, not as a wait until its deadline.
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
