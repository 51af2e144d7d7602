package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeQMP is the QEMU end of a QMP connection, driven by the test.
type fakeQMP struct {
	t    *testing.T
	conn net.Conn
	dec  *json.Decoder
	wmu  sync.Mutex
}

type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

func newFake(t *testing.T, conn net.Conn) *fakeQMP {
	t.Cleanup(func() { conn.Close() })
	return &fakeQMP{t: t, conn: conn, dec: json.NewDecoder(conn)}
}

// send writes one raw JSON message. It may run on any goroutine.
func (f *fakeQMP) send(msg string) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := io.WriteString(f.conn, msg+"\n")
	return err
}

func (f *fakeQMP) recv() (fakeRequest, error) {
	var r fakeRequest
	err := f.dec.Decode(&r)
	return r, err
}

func (f *fakeQMP) reply(r fakeRequest, ret string) error {
	return f.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, r.ID))
}

// handshake plays QEMU's side of Dial.
func (f *fakeQMP) handshake() error {
	if err := f.send(testGreeting); err != nil {
		return err
	}
	r, err := f.recv()
	if err != nil {
		return err
	}
	if r.Execute != "qmp_capabilities" {
		return fmt.Errorf("first command %q, want qmp_capabilities", r.Execute)
	}
	return f.reply(r, "{}")
}

// connect returns a client talking to a fake peer over net.Pipe; serve
// runs the peer's side after the handshake.
func connect(t *testing.T, serve func(f *fakeQMP) error) *Client {
	t.Helper()
	clientEnd, peerEnd := net.Pipe()
	f := newFake(t, peerEnd)
	peerDone := make(chan error, 1)
	go func() {
		err := f.handshake()
		if err == nil && serve != nil {
			err = serve(f)
		}
		peerDone <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := newClient(ctx, clientEnd)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := <-peerDone; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("fake peer: %v", err)
		}
	})
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Dial over a real unix socket: greeting, capabilities, one command.
func TestDialUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "q")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		f := newFake(t, conn)
		if f.handshake() != nil {
			return
		}
		r, err := f.recv()
		if err != nil {
			return
		}
		f.reply(r, `{"status": "prelaunch", "running": false}`)
	}()

	c, err := Dial(testContext(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var v struct {
		QEMU struct{ Major, Minor int } `json:"qemu"`
	}
	if err := json.Unmarshal(c.Version(), &v); err != nil || v.QEMU.Major != 7 || v.QEMU.Minor != 2 {
		t.Errorf("version %s (%v), want 7.2", c.Version(), err)
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(testContext(t), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "prelaunch" || st.Running {
		t.Errorf("status %+v", st)
	}
}

func TestDialNoSocket(t *testing.T) {
	if _, err := Dial(testContext(t), "/nonexistent/qmp.sock"); err == nil {
		t.Fatal("Dial succeeded without a socket")
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name string
		peer func(f *fakeQMP)
	}{
		{"not a greeting", func(f *fakeQMP) { f.send(`{"return": {}}`) }},
		{"garbage", func(f *fakeQMP) { f.send(`not json`) }},
		{"closed before greeting", func(f *fakeQMP) { f.conn.Close() }},
		{"capabilities refused", func(f *fakeQMP) {
			f.send(testGreeting)
			r, _ := f.recv()
			f.send(fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "no"}, "id": %s}`, r.ID))
		}},
		{"closed after greeting", func(f *fakeQMP) {
			f.send(testGreeting)
			f.recv()
			f.conn.Close()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientEnd, peerEnd := net.Pipe()
			f := newFake(t, peerEnd)
			go tt.peer(f)
			c, err := newClient(testContext(t), clientEnd)
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
		})
	}
}

// QEMU leaves a second monitor client waiting without a greeting: Dial
// must give up with the context.
func TestHandshakeHonoursContext(t *testing.T) {
	clientEnd, peerEnd := net.Pipe()
	newFake(t, peerEnd) // never speaks
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := newClient(ctx, clientEnd)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

// Replies come back in reverse order of the requests; each caller gets its
// own.
func TestConcurrentExecute(t *testing.T) {
	const n = 50
	c := connect(t, func(f *fakeQMP) error {
		var reqs []fakeRequest
		for range n {
			r, err := f.recv()
			if err != nil {
				return err
			}
			reqs = append(reqs, r)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			if err := f.reply(reqs[i], string(reqs[i].Arguments)); err != nil {
				return err
			}
		}
		return nil
	})
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			var got struct{ N int }
			if err := c.Execute(ctx, "echo", map[string]int{"n": i}, &got); err != nil {
				errs <- err
				return
			}
			if got.N != i {
				errs <- fmt.Errorf("call %d got reply %d", i, got.N)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestErrorReply(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		return f.send(fmt.Sprintf(`{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": %s}`, r.ID))
	})
	err := c.Execute(testContext(t), "device_del", map[string]string{"id": "x"}, nil)
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("err = %v, want *QMPError", err)
	}
	if qe.Class != "DeviceNotFound" || qe.Desc != "Device 'x' not found" {
		t.Errorf("QMPError %+v", qe)
	}
	if errors.Is(err, ErrDisconnected) {
		t.Error("an error reply is not a disconnection")
	}
}

func TestArgumentsAndNoArguments(t *testing.T) {
	got := make(chan fakeRequest, 2)
	c := connect(t, func(f *fakeQMP) error {
		for range 2 {
			r, err := f.recv()
			if err != nil {
				return err
			}
			got <- r
			if err := f.reply(r, "{}"); err != nil {
				return err
			}
		}
		return nil
	})
	ctx := testContext(t)
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "system_reset", struct {
		Force bool `json:"force"`
	}{true}, nil); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.Execute != "cont" || r.Arguments != nil {
		t.Errorf("first request %+v, want cont without arguments", r)
	}
	if r := <-got; r.Execute != "system_reset" || string(r.Arguments) != `{"force":true}` {
		t.Errorf("second request %+v", r)
	}
}

func TestEventsInterleavedWithReplies(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		for _, m := range []string{
			`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "RESUME"}`,
			fmt.Sprintf(`{"return": {"status": "running"}, "id": %s}`, r.ID),
			`{"timestamp": {"seconds": 1700000001, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}`,
		} {
			if err := f.send(m); err != nil {
				return err
			}
		}
		return nil
	})
	var st struct{ Status string }
	if err := c.Execute(testContext(t), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" {
		t.Errorf("status %q", st.Status)
	}
	for _, want := range []string{"RESUME", "SHUTDOWN"} {
		select {
		case ev := <-c.Events():
			if ev.Name != want {
				t.Errorf("event %q, want %q", ev.Name, want)
			}
			if want == "RESUME" && !ev.Time.Equal(time.Unix(1700000000, 5000)) {
				t.Errorf("event time %v", ev.Time)
			}
			if want == "SHUTDOWN" && string(ev.Data) != `{"guest": true, "reason": "guest-shutdown"}` {
				t.Errorf("event data %s", ev.Data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event", want)
		}
	}
}

// Nobody reads events: replies must still get through.
func TestUnreadEventsDoNotBlockReplies(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		for range 3 * eventBuffer {
			if err := f.send(`{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "RTC_CHANGE", "data": {"offset": 1}}`); err != nil {
				return err
			}
		}
		return f.reply(r, "{}")
	})
	if err := c.Execute(testContext(t), "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Events()); n != eventBuffer {
		t.Errorf("%d events buffered, want %d", n, eventBuffer)
	}
}

// QEMU exits with a command in flight: the call fails, and so does every
// later one, at once.
func TestEOFFailsPendingCalls(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		if _, err := f.recv(); err != nil {
			return err
		}
		return f.conn.Close()
	})
	err := c.Execute(testContext(t), "query-status", nil, nil)
	if !errors.Is(err, ErrDisconnected) || !errors.Is(err, io.EOF) {
		t.Fatalf("err = %v, want ErrDisconnected wrapping EOF", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if _, ok := <-c.Events(); ok {
		t.Error("Events not closed")
	}
	if err := c.Execute(testContext(t), "cont", nil, nil); !errors.Is(err, ErrDisconnected) {
		t.Errorf("later call: %v, want ErrDisconnected", err)
	}
}

// QEMU answers "quit" and closes at once: the reply still counts.
func TestReplyThenEOF(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		if err := f.reply(r, "{}"); err != nil {
			return err
		}
		return f.conn.Close()
	})
	if err := c.Execute(testContext(t), "quit", nil, nil); err != nil {
		t.Fatalf("quit: %v", err)
	}
}

func TestCloseFailsPendingCalls(t *testing.T) {
	received := make(chan struct{})
	c := connect(t, func(f *fakeQMP) error {
		if _, err := f.recv(); err != nil {
			return err
		}
		close(received)
		_, err := f.recv() // until the client closes
		return err
	})
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(testContext(t), "query-status", nil, nil) }()
	<-received
	c.Close()
	if err := <-errc; !errors.Is(err, ErrDisconnected) {
		t.Fatalf("err = %v, want ErrDisconnected", err)
	}
}

// A call abandoned by its context does not disturb the next one, even
// when its reply arrives late.
func TestContextCancelsCall(t *testing.T) {
	release := make(chan struct{})
	c := connect(t, func(f *fakeQMP) error {
		slow, err := f.recv()
		if err != nil {
			return err
		}
		<-release
		if err := f.reply(slow, `{"late": true}`); err != nil {
			return err
		}
		r, err := f.recv()
		if err != nil {
			return err
		}
		return f.reply(r, `{"late": false}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	close(release)
	var got struct{ Late bool }
	if err := c.Execute(testContext(t), "fast", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Late {
		t.Error("got the abandoned call's reply")
	}
}

func TestBadResultType(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		return f.reply(r, `"a string"`)
	})
	var n int
	if err := c.Execute(testContext(t), "x", nil, &n); err == nil {
		t.Fatal("no error decoding a string into an int")
	}
}
