package channel

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
)

// recorder records each Write call separately.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
}

func (r *recorder) Read([]byte) (int, error) { return 0, io.EOF }
func (r *recorder) Close() error             { return nil }
func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func header(typ byte, length uint32) []byte {
	h := make([]byte, headerSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCoalesceJoinsDataHeaderAndBody(t *testing.T) {
	rec := &recorder{}
	c := coalesce(rec)
	body := []byte("hello")
	if n, err := c.Write(header(typeData, 5)); err != nil || n != headerSize {
		t.Fatalf("header write = %d, %v", n, err)
	}
	if len(rec.writes) != 0 {
		t.Fatal("data header was written before its body")
	}
	if n, err := c.Write(body); err != nil || n != len(body) {
		t.Fatalf("body write = %d, %v", n, err)
	}
	want := append(header(typeData, 5), body...)
	if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], want) {
		t.Fatalf("writes = %q, want one %q", rec.writes, want)
	}
}

func TestCoalescePassesOtherFrames(t *testing.T) {
	rec := &recorder{}
	c := coalesce(rec)
	update := header(1, 4096) // window update: length is not a body
	c.Write(update)
	empty := header(typeData, 0) // data frame with flags only (SYN, FIN)
	c.Write(empty)
	if len(rec.writes) != 2 || !bytes.Equal(rec.writes[0], update) || !bytes.Equal(rec.writes[1], empty) {
		t.Fatalf("writes = %q", rec.writes)
	}
	// A header followed by a write of another size is sent as it came.
	c.Write(header(typeData, 3))
	c.Write([]byte("toolong"))
	if len(rec.writes) != 4 || string(rec.writes[3]) != "toolong" {
		t.Fatalf("writes = %q", rec.writes)
	}
}

// TestSessionBothWays runs a session over a socket pair and opens streams
// from both ends, as the host (calling the agent) and the guest (calling
// VmReady) do.
func TestSessionBothWays(t *testing.T) {
	a, b := net.Pipe()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	client, err := ClientSession(a, log)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ServerSession(b, log)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	roundTrip := func(opener, acceptor *Session, msg string) {
		t.Helper()
		done := make(chan string, 1)
		go func() {
			s, err := acceptor.Accept()
			if err != nil {
				done <- "accept: " + err.Error()
				return
			}
			defer s.Close()
			buf := make([]byte, len(msg))
			io.ReadFull(s, buf)
			s.Write(bytes.ToUpper(buf))
			done <- string(buf)
		}()
		s, err := opener.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Write([]byte(msg))
		reply := make([]byte, len(msg))
		if _, err := io.ReadFull(s, reply); err != nil {
			t.Fatal(err)
		}
		if got := <-done; got != msg {
			t.Fatalf("peer got %q, want %q", got, msg)
		}
		if string(reply) != string(bytes.ToUpper([]byte(msg))) {
			t.Fatalf("reply %q", reply)
		}
	}
	roundTrip(client, server, "host to guest")
	roundTrip(server, client, "guest to host")

	// The session ends for both sides when the transport closes.
	a.Close()
	<-server.CloseChan()
}
