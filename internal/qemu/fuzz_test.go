package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// closeTracker is a connection that remembers being closed by its owner.
type closeTracker struct {
	net.Conn
	closed atomic.Bool
}

func (c *closeTracker) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// fuzzTimeout bounds each call of the fuzzed client: replies come at
// once, and a stream that answers nothing must not cost more.
const fuzzTimeout = 25 * time.Millisecond

// FuzzQMP plays QEMU with arbitrary bytes: the stream is cut at blank
// lines, the first part sent at once, each next one after the client's
// next command, and the connection closed after the last. The client
// dials, runs two commands and sees the connection end. It must never
// panic or hang: every call returns within its context, and once the
// connection ends, Done is closed, Err and later calls say
// ErrDisconnected, and Events is closed. A first message that is not a
// greeting fails the dial, which closes the connection; a dial that
// succeeds reports the greeting's version verbatim. Command errors name
// the command; events have names.
func FuzzQMP(f *testing.F) {
	const ok = `{"return": {}, "id": 1}`
	for _, s := range []string{
		testGreeting + "\n\n" + ok + "\n\n" + `{"return": {"status": "running", "running": true}, "id": 2}` + "\n\n" + `{"return": "info", "id": 3}`,
		testGreeting + "\n\n" + ok + "\n\n" + `{"error": {"class": "GenericError", "desc": "no"}, "id": 2}`,
		testGreeting + "\n\n" + `{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + ok + "\n\n" + `{"return": 5, "id": 2}`,
		testGreeting + "\n\n" + ok + "\n\n" + `{"return": {}, "id": "2"}{"return": {}, "id": 2.0}{"return": {}, "id": -2}{"id": 2}`,
		testGreeting + "\n\n" + ok + "\n\n" + `{"event": "SHUTDOWN", "data": {"guest": true}}{"return": {}, "id": 99}`,
		testGreeting + "\n\n" + `{"error": {"class": "CommandNotFound", "desc": "x"}, "id": 1}`,
		testGreeting + `{"return": {}, "id": 1}`,
		testGreeting + "\n\n" + ok + "\n\n" + `{"error": {"class": 5}, "id": 2}`,
		testGreeting + "\n\n" + ok + "\n\n" + `{"return": {}, "id": 18446744073709551617}`,
		`{"QMP": {}}` + "\n\n" + ok,
		`{"QMP": null}`, `{"qmp": {"version": 1}}` + "\n\n" + ok,
		`{"return": {}}`, `[]`, `"QMP"`, `not json`, `{"QMP": {"version": `, "", "\n\n\n\n", "\x00\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		// A hang crashes the worker, which keeps the input.
		hung := time.AfterFunc(10*time.Second, func() {
			panic(fmt.Sprintf("QMP client still busy after 10 s with %q", stream))
		})
		defer hung.Stop()
		fuzzQMP(t, stream)
	})
}

func fuzzQMP(t *testing.T, stream []byte) {
	parts := bytes.Split(stream, []byte("\n\n"))
	clientEnd, peer := net.Pipe()
	conn := &closeTracker{Conn: clientEnd}
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		defer peer.Close()
		dec := json.NewDecoder(peer)
		for i, p := range parts {
			if i > 0 {
				var req json.RawMessage
				if dec.Decode(&req) != nil {
					return
				}
			}
			if _, err := peer.Write(p); err != nil {
				return
			}
		}
	}()

	var greeting message
	gerr := json.NewDecoder(bytes.NewReader(parts[0])).Decode(&greeting)
	ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
	c, err := newClient(ctx, conn)
	cancel()
	if err != nil {
		if !conn.closed.Load() {
			t.Fatalf("dial failed (%v) and left the connection open", err)
		}
		<-peerDone
		return
	}
	defer c.Close()
	if gerr != nil || greeting.QMP == nil {
		t.Fatalf("dial succeeded on a first message that is no greeting (%v)", gerr)
	}
	if !bytes.Equal(c.Version(), greeting.QMP.Version) {
		t.Fatalf("version %q, greeting says %q", c.Version(), greeting.QMP.Version)
	}

	var status struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	var text string
	for _, call := range []struct {
		command string
		args    any
		result  any
	}{
		{"query-status", nil, &status},
		{"human-monitor-command", map[string]string{"command-line": "info status"}, &text},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), fuzzTimeout)
		err := c.Execute(ctx, call.command, call.args, call.result)
		cancel()
		if err != nil && !strings.HasPrefix(err.Error(), "qmp "+call.command+": ") {
			t.Fatalf("error %q does not name the command %s", err, call.command)
		}
	}

	// QEMU goes away.
	peer.Close()
	<-peerDone
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("connection ended, Done not closed")
	}
	if err := c.Err(); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Err = %v, want ErrDisconnected", err)
	}
	timeout := time.After(2 * time.Second)
	for open := true; open; {
		select {
		case ev, ok := <-c.Events():
			if ok && ev.Name == "" {
				t.Fatalf("event without a name: %+v", ev)
			}
			open = ok
		case <-timeout:
			t.Fatal("connection ended, Events not closed")
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), fuzzTimeout)
	defer cancel()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("command after the end: %v, want ErrDisconnected", err)
	}
	c.Close()
	if !conn.closed.Load() {
		t.Fatal("Close left the connection open")
	}
}
