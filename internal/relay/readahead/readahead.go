// Package readahead reads a process's output ahead of a Kata client's
// ReadStdout and ReadStderr calls. A client reads output one call at a
// time, 32 KiB each (Kata's shim does), each a round trip from the client
// to cabind and on to the guest, where under emulation a call's fixed
// cost is most of its cost. cabind instead asks the agent for FetchLen at
// a time, answers the client's calls from what came, and keeps one call
// to the agent under way while the client takes it, so the guest writes
// the next output while the last travels on (decisions §38).
//
// What a stream holds is read in order, one call at a time, and kept for
// whoever reads the stream next: a call that gives up (cancelled, past
// its deadline) loses nothing, as it loses nothing at the agent. What
// cabind holds that no client has taken is kept in a spool file in the
// VM's directory as well, for the next cabind should this one die: dying
// loses only what is in flight, the answer to a client and the reply the
// agent has sent and cabind not yet read (see spool).
package readahead

import (
	"context"
	"os"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/kata"
)

// Reply is one reply of the agent's, as relayed: the encoded
// ReadStreamResponse and the call's header and trailer.
type Reply struct {
	Msg             []byte
	Header, Trailer metadata.MD
}

// Invoke makes one ReadStdout or ReadStderr call, whose encoded request
// is req, to the agent. Its error is the call's status.
type Invoke func(ctx context.Context, req []byte) (Reply, error)

// key names a stream: a VM's (its owner's, its name), a process's (its
// container's, its exec id, "" for the init), and which of its outputs.
type key struct {
	owner, vm, container, exec string
	stderr                     bool
}

// Streams keeps what is read ahead of each stream being read.
type Streams struct {
	max   int
	spool SpoolDir
	mu    sync.Mutex
	m     map[key]*stream
}

// SpoolDir names the directory that keeps the spools of the VM (owner,
// vm), "" for none: a directory of the VM's own, in one that exists while
// the VM does. ForgetVM removes it.
type SpoolDir func(owner, vm string) string

// MaxStreams is the bound cabind gives New: each stream holds up to
// FetchLen and a reply under way, 16 MiB in all at most.
const MaxStreams = 64

// New returns Streams that read ahead at most max streams at once, and
// keep what they read ahead in spool files in the directories spool
// names (none when nil); calls on any other go straight through.
func New(max int, spool SpoolDir) *Streams {
	return &Streams{max: max, spool: spool, m: map[key]*stream{}}
}

// stream is one stream's output read ahead.
type stream struct {
	// turn is held by the call reading the stream: one at a time, in
	// order. It guards the rest.
	turn chan struct{}
	buf  []byte // read ahead and not yet taken
	next *fetch // being read, or read and not yet looked at; nil if none
	sp   *spool // nil when the stream has none
	// gone is set when the stream is dropped: a call to the agent not
	// yet made is not made, since the process it would read may be one
	// made anew under the id, whose output nobody would then get.
	gone atomic.Bool
}

// fetch is one call to the agent.
type fetch struct {
	done  chan struct{}
	reply Reply
	err   error
	data  []byte // the output the reply holds; nil for anything else
}

// FetchLen is how much each call to the agent asks for: four times a
// Kata client's usual 32 KiB, so that one call's fixed cost in the guest,
// which under emulation is most of a call's, carries four times the
// bytes. The agent answers it as four port writes of one reply.
const FetchLen = 128 << 10

// zeroLen is what a call asking for 0 bytes gets at most: what cabin's
// agent gives it.
const zeroLen = 32<<10 - 64

// start calls the agent for the next output of the stream req reads, on
// a context the caller's end does not cancel: what comes is kept for the
// next read if the caller gives up. A call the agent has begun to answer
// cannot be taken back, and its bytes would be lost.
// Output that comes goes into st's spool, if any, at once: from there a
// next cabind has it, should this one die before a client has it.
func start(ctx context.Context, req *kata.ReadStreamRequest, invoke Invoke, st *stream) *fetch {
	f := &fetch{done: make(chan struct{})}
	ctx = context.WithoutCancel(ctx)
	b, err := proto.Marshal(&kata.ReadStreamRequest{ContainerId: req.GetContainerId(), ExecId: req.GetExecId(), Len: FetchLen})
	if err != nil {
		f.err = err
		close(f.done)
		return f
	}
	go func() {
		defer close(f.done)
		if st.gone.Load() {
			f.err = status.Error(codes.NotFound, "the process was removed or made anew while its output was being read")
			return
		}
		f.reply, f.err = invoke(ctx, b)
		var resp kata.ReadStreamResponse
		if f.err != nil || proto.Unmarshal(f.reply.Msg, &resp) != nil || len(resp.GetData()) == 0 {
			return
		}
		f.data = resp.GetData()
		if st.sp != nil {
			if err := st.sp.append(f.data); err != nil {
				// A full disk: the stream goes on without its spool.
				st.sp.remove()
			}
		}
	}()
	return f
}

// Read answers one ReadStdout (or, with stderr, ReadStderr) call, whose
// encoded request is req, for the VM (owner, vm): with output read ahead
// when there is some, and with one call to the agent under way for the
// next when it returns. A request it cannot read goes through as it is.
//
// What the agent answers beyond the output (a header, a trailer) is not
// passed on for output read ahead: the agent sets none. Its errors and
// the end pass as they came, once what came before has been read.
func (s *Streams) Read(ctx context.Context, owner, vm string, stderr bool, req []byte, invoke Invoke) (Reply, error) {
	var r kata.ReadStreamRequest
	if err := proto.Unmarshal(req, &r); err != nil {
		return invoke(ctx, req)
	}
	k := key{owner: owner, vm: vm, container: r.GetContainerId(), exec: initExec(r.GetContainerId(), r.GetExecId()), stderr: stderr}
	st := s.stream(k)
	if st == nil {
		return invoke(ctx, req)
	}
	select {
	case st.turn <- struct{}{}:
	case <-ctx.Done():
		return Reply{}, status.FromContextError(ctx.Err()).Err()
	}
	defer func() { <-st.turn }()
	for len(st.buf) == 0 {
		if st.next == nil {
			st.next = start(ctx, &r, invoke, st)
		}
		f := st.next
		select {
		case <-f.done:
		case <-ctx.Done():
			// What comes stays for the next call.
			return Reply{}, status.FromContextError(ctx.Err()).Err()
		}
		st.next = nil
		if f.data == nil {
			// An error, the end, or a reply this does not know: it goes
			// to the caller as it came, and a later call to the agent.
			s.drop(k, st)
			return f.reply, f.err
		}
		st.buf = f.data
	}
	// As the agent, no more than the call asks for.
	want := int(r.GetLen())
	if want == 0 {
		want = zeroLen
	}
	data := st.buf[:min(len(st.buf), want)]
	msg, err := proto.Marshal(&kata.ReadStreamResponse{Data: data})
	if err != nil {
		return Reply{}, err
	}
	if st.sp != nil {
		if err := st.sp.take(len(data)); err != nil {
			st.sp.remove()
		}
	}
	if st.buf = st.buf[len(data):]; len(st.buf) == 0 {
		st.buf = nil
	}
	if st.next == nil {
		st.next = start(ctx, &r, invoke, st)
	}
	return Reply{Msg: msg}, nil
}

// stream returns k's stream, new if need be; nil when max streams are
// read ahead already. A reply read ahead is kept across the agent's
// connection coming back (the process is still there); a process made
// anew under a used id is a new stream (Forget).
func (s *Streams) stream(k key) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.m[k]; ok {
		return st
	}
	if len(s.m) >= s.max {
		return nil
	}
	st := &stream{turn: make(chan struct{}, 1)}
	if dir := s.spoolDir(k.owner, k.vm); dir != "" {
		// Without its spool (a full disk, the VM's directory gone) the
		// stream is read ahead all the same.
		if sp, left, err := openSpool(dir, spoolName(k)); err == nil {
			st.sp, st.buf = sp, left
		}
	}
	s.m[k] = st
	return st
}

// spoolDir is where the VM (owner, vm) keeps its spools, "" for nowhere.
func (s *Streams) spoolDir(owner, vm string) string {
	if s.spool == nil {
		return ""
	}
	return s.spool(owner, vm)
}

// drop forgets st, k's stream, unless another has replaced it.
func (s *Streams) drop(k key, st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[k] == st {
		delete(s.m, k)
	}
	st.drop()
}

// drop marks the stream gone and removes its spool.
func (st *stream) drop() {
	st.gone.Store(true)
	if st.sp != nil {
		st.sp.remove()
	}
}

// Forget drops what is read ahead for a container's processes in the VM
// (owner, vm), or, with exec set, for that exec's only: a container or an
// exec made anew with an id that was used before is a new process, and
// must not be answered with what its predecessor left (its end, most
// likely). A reply still being read for them is dropped when it comes.
func (s *Streams) Forget(owner, vm, container, exec string) {
	s.forget(owner, vm, func(k key) bool {
		return k.container == container && (exec == "" || k.exec == initExec(container, exec))
	}, func(dir string) error {
		// And those an earlier cabind left that nobody has read since.
		removeSpools(dir, container, exec)
		return nil
	})
}

// ForgetVM drops what is read ahead of the processes of the VM (owner,
// vm), and removes its spools: the VM is gone, or starts anew, and its
// processes with it.
func (s *Streams) ForgetVM(owner, vm string) error {
	return s.forget(owner, vm, func(key) bool { return true }, os.RemoveAll)
}

// forget drops the streams of the VM (owner, vm) that match, and has
// spools clear the VM's spool directory, if it has one.
func (s *Streams) forget(owner, vm string, match func(key) bool, spools func(dir string) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, st := range s.m {
		if k.owner == owner && k.vm == vm && match(k) {
			delete(s.m, k)
			st.drop()
		}
	}
	if dir := s.spoolDir(owner, vm); dir != "" {
		return spools(dir)
	}
	return nil
}

// initExec is the exec id a process is read by: the agent takes an empty
// one, and the container's own id, for the init. One key for both keeps
// a client that uses both from reading the init ahead twice, its
// replies then out of order.
func initExec(container, exec string) string {
	if exec == "" {
		return container
	}
	return exec
}

// len is how many streams are read ahead.
func (s *Streams) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
