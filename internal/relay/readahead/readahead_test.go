package readahead

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/kata"
)

// agent plays the agent's side of one VM: each process's output is a
// byte string handed out up to len a call, in order, as the agent does;
// a process whose output is used up blocks until more is written, or
// ends. A call is on the process its name had when the call came, as in
// the agent: one made anew under the name (replace) is another.
type agent struct {
	mu    sync.Mutex
	procs map[string]*proc // by container/exec
	more  chan struct{}    // closed and replaced when output is written
	lens  []uint32
}

type proc struct {
	out   []byte
	ended bool
	err   error // an error instead of output
}

func newAgent() *agent {
	return &agent{procs: map[string]*proc{}, more: make(chan struct{})}
}

func (a *agent) proc(name string) *proc {
	p := a.procs[name]
	if p == nil {
		p = &proc{}
		a.procs[name] = p
	}
	return p
}

// change changes a process's state and wakes its readers.
func (a *agent) change(name string, f func(*proc)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a.proc(name))
	close(a.more)
	a.more = make(chan struct{})
}

func (a *agent) write(name string, b []byte, end bool) {
	a.change(name, func(p *proc) {
		p.out = append(p.out, b...)
		p.ended = p.ended || end
	})
}

// replace ends a process and makes another of its name.
func (a *agent) replace(name string) {
	a.change(name, func(p *proc) { p.ended = true })
	a.mu.Lock()
	a.procs[name] = &proc{}
	a.mu.Unlock()
}

func (a *agent) invoke(ctx context.Context, req []byte) (Reply, error) {
	var r kata.ReadStreamRequest
	if err := proto.Unmarshal(req, &r); err != nil {
		return Reply{}, status.Error(codes.InvalidArgument, "bad request")
	}
	a.mu.Lock()
	p := a.proc(r.GetContainerId() + "/" + initExec(r.GetContainerId(), r.GetExecId()))
	a.lens = append(a.lens, r.GetLen())
	a.mu.Unlock()
	for {
		a.mu.Lock()
		if p.err != nil {
			a.mu.Unlock()
			return Reply{}, p.err
		}
		if len(p.out) > 0 || p.ended {
			n := min(len(p.out), int(r.GetLen()))
			out := p.out[:n]
			p.out = p.out[n:]
			a.mu.Unlock()
			msg, _ := proto.Marshal(&kata.ReadStreamResponse{Data: out})
			return Reply{Msg: msg}, nil
		}
		more := a.more
		a.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			return Reply{}, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// read is a client's ReadStdout of up to n bytes through s.
func read(ctx context.Context, s *Streams, a *agent, container, exec string, n uint32) ([]byte, error) {
	return readWith(ctx, s, a.invoke, container, exec, n)
}

// readWith is read through s with calls to the agent made by invoke.
func readWith(ctx context.Context, s *Streams, invoke Invoke, container, exec string, n uint32) ([]byte, error) {
	req, _ := proto.Marshal(&kata.ReadStreamRequest{ContainerId: container, ExecId: exec, Len: n})
	r, err := s.Read(ctx, "o", "vm", false, req, invoke)
	if err != nil {
		return nil, err
	}
	var resp kata.ReadStreamResponse
	if err := proto.Unmarshal(r.Msg, &resp); err != nil {
		return nil, err
	}
	return resp.GetData(), nil
}

// readAll reads until the end, n bytes a call.
func readAll(t *testing.T, s *Streams, a *agent, container, exec string, n uint32) []byte {
	t.Helper()
	var all []byte
	for {
		b, err := read(t.Context(), s, a, container, exec, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			return all
		}
		if len(b) > int(n) {
			t.Fatalf("a call for %d bytes got %d", n, len(b))
		}
		all = append(all, b...)
	}
}

// calls waits until the agent has had n calls.
func calls(t *testing.T, a *agent, n int) {
	t.Helper()
	eventually(t, func() (bool, string) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.lens) == n, fmt.Sprintf("the agent had %d calls, want %d", len(a.lens), n)
	})
}

// eventually waits up to 10 s for ok, and fails with what it last said.
func eventually(t *testing.T, ok func() (bool, string)) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		done, says := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(says)
		}
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// Output comes whole and in order, no call getting more than it asked
// for, the agent asked for FetchLen a time; after the end the stream is
// forgotten.
func TestReadInOrder(t *testing.T) {
	for _, n := range []uint32{1, 1000, 32 << 10, FetchLen, 1 << 20} {
		s, a := New(8, nil), newAgent()
		want := pattern(min(700<<10, int(n)*5000))
		a.write("c/c", want, true)
		if got := readAll(t, s, a, "c", "", n); !bytes.Equal(got, want) {
			t.Fatalf("reads of %d: %d bytes, want %d the same", n, len(got), len(want))
		}
		for _, l := range a.lens {
			if l != FetchLen {
				t.Fatalf("the agent was asked for %d bytes, want %d", l, FetchLen)
			}
		}
		if s.len() != 0 {
			t.Fatalf("reads of %d: %d streams kept after the end", n, s.len())
		}
	}
}

// A call that gives up takes nothing: what the agent answers is the next
// call's, and an exec id of "" and the container's own name the same
// stream.
func TestCancelledCallLosesNothing(t *testing.T) {
	s, a := New(8, nil), newAgent()
	a.write("c/c", []byte("first"), false)
	if b, err := read(t.Context(), s, a, "c", "c", 32<<10); err != nil || string(b) != "first" {
		t.Fatalf("read %q, %v", b, err)
	}
	// The next output is being read ahead; the caller gives up first.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := read(ctx, s, a, "c", "", 32<<10); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a read past its deadline: %v, want DeadlineExceeded", err)
	}
	a.write("c/c", []byte("second"), true)
	if got := readAll(t, s, a, "c", "", 32<<10); string(got) != "second" {
		t.Fatalf("after a call gave up: %q, want %q", got, "second")
	}
}

// An error from the agent reaches the caller after the output before it,
// and ends the reading ahead; the next call goes to the agent again.
func TestErrorAfterOutput(t *testing.T) {
	s, a := New(8, nil), newAgent()
	a.write("c/e", []byte("out"), false)
	if b, err := read(t.Context(), s, a, "c", "e", 100); err != nil || string(b) != "out" {
		t.Fatalf("read %q, %v", b, err)
	}
	a.change("c/e", func(p *proc) { p.err = status.Error(codes.NotFound, "no process e") })
	if _, err := read(t.Context(), s, a, "c", "e", 100); status.Code(err) != codes.NotFound {
		t.Fatalf("read: %v, want NotFound", err)
	}
	if s.len() != 0 {
		t.Fatalf("%d streams kept after an error", s.len())
	}
}

// Forget drops what a container's processes left, so that a new process
// of the same id does not get it; others keep theirs.
func TestForget(t *testing.T) {
	s, a := New(8, nil), newAgent()
	a.write("c/x", pattern(200<<10), false)
	a.write("d/d", []byte("kept"), false)
	if _, err := read(t.Context(), s, a, "c", "x", 10); err != nil {
		t.Fatal(err)
	}
	if _, err := read(t.Context(), s, a, "d", "", 2); err != nil {
		t.Fatal(err)
	}
	// The calls read ahead reach the agent before the process is made
	// anew, as through cabind they reach it before the call that makes it.
	calls(t, a, 4)
	s.Forget("o", "vm", "c", "x")
	s.Forget("o", "other", "d", "")
	if s.len() != 1 {
		t.Fatalf("%d streams after forgetting one of two, want 1", s.len())
	}
	a.replace("c/x")
	a.write("c/x", []byte("new"), true)
	if got := readAll(t, s, a, "c", "x", 32<<10); string(got) != "new" {
		t.Fatalf("a new process read %d bytes, want its own %q", len(got), "new")
	}
	a.write("d/d", nil, true)
	if got := readAll(t, s, a, "d", "d", 32<<10); string(got) != "pt" {
		t.Fatalf("the other stream read %q, want the rest %q", got, "pt")
	}
}

// Past max streams, calls go straight through: one call to the agent
// each, for what the call asks.
func TestBound(t *testing.T) {
	s, a := New(1, nil), newAgent()
	a.write("a/a", []byte("aaaa"), false)
	a.write("b/b", []byte("bbbb"), false)
	if _, err := read(t.Context(), s, a, "a", "", 1); err != nil {
		t.Fatal(err)
	}
	calls(t, a, 2) // the read and the one ahead
	a.mu.Lock()
	a.lens = nil
	a.mu.Unlock()
	if b, err := read(t.Context(), s, a, "b", "", 2); err != nil || string(b) != "bb" {
		t.Fatalf("read %q, %v", b, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.lens) != 1 || a.lens[0] != 2 {
		t.Fatalf("the agent was asked %v, want one call for 2 bytes", a.lens)
	}
}

// A request that does not decode goes to the agent as it is.
func TestPassThrough(t *testing.T) {
	s := New(8, nil)
	var got [][]byte
	invoke := func(_ context.Context, req []byte) (Reply, error) {
		got = append(got, req)
		return Reply{}, errors.New("refused")
	}
	if _, err := s.Read(t.Context(), "o", "vm", true, []byte{0xff, 0xff}, invoke); err == nil {
		t.Fatal("no error")
	}
	if len(got) != 1 || !bytes.Equal(got[0], []byte{0xff, 0xff}) || s.len() != 0 {
		t.Fatalf("passed %x, kept %d streams", got, s.len())
	}
}

// Calls of every length, 0 among them (what the agent gives for 0 at
// most), read one stream in order.
func TestMixedLengths(t *testing.T) {
	s, a := New(8, nil), newAgent()
	want := pattern(900 << 10)
	a.write("c/c", want, true)
	var got []byte
	sizes := []uint32{32 << 10, 1, 5000, 0, 100 << 10, FetchLen + 1}
	for i := 0; ; i++ {
		n := sizes[i%len(sizes)]
		b, err := read(t.Context(), s, a, "c", "", n)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			break
		}
		if limit := cmp.Or(int(n), zeroLen); len(b) > limit {
			t.Fatalf("a call for %d bytes got %d", n, len(b))
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d the same", len(got), len(want))
	}
}
