package relay

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/relay/readahead"
)

// outputAgent is a Kata agent whose processes' output is set by the
// test; ExecProcess and RemoveContainer make and drop processes as the
// agent does, and every read's length is recorded.
type outputAgent struct {
	kata.UnimplementedAgentServiceServer
	mu   sync.Mutex
	out  map[string][]byte // by container/exec; present while the process is
	lens []uint32
}

func (a *outputAgent) ReadStdout(_ context.Context, r *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lens = append(a.lens, r.GetLen())
	exec := r.GetExecId()
	if exec == "" {
		exec = r.GetContainerId()
	}
	out, ok := a.out[r.GetContainerId()+"/"+exec]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no process %s", exec)
	}
	n := min(len(out), int(r.GetLen()))
	a.out[r.GetContainerId()+"/"+exec] = out[n:]
	return &kata.ReadStreamResponse{Data: out[:n]}, nil
}

func (a *outputAgent) ExecProcess(_ context.Context, r *kata.ExecProcessRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.out[r.GetContainerId()+"/"+r.GetExecId()] = []byte("new " + r.GetExecId())
	return &emptypb.Empty{}, nil
}

func (a *outputAgent) RemoveContainer(_ context.Context, r *kata.RemoveContainerRequest) (*emptypb.Empty, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.out {
		if bytes.HasPrefix([]byte(k), []byte(r.GetContainerId()+"/")) {
			delete(a.out, k)
		}
	}
	return &emptypb.Empty{}, nil
}

// A Kata client reading 32 KiB a call through the relay gets the output
// whole and in order while the agent is asked for FetchLen a call; an
// exec made anew under the id of one that ended is read from the start,
// not from what the relay kept of its predecessor.
func TestReadStdoutReadAhead(t *testing.T) {
	a := &outputAgent{out: map[string][]byte{}}
	want := bytes.Repeat([]byte("0123456789abcdef"), 40<<10) // 640 KiB
	a.out["c/e"] = want
	srv := grpc.NewServer()
	kata.RegisterAgentServiceServer(srv, a)
	client := kata.NewAgentServiceClient(relayTo(t, srv))
	ctx := toVM("vm1")
	read := func(exec string, n uint32) []byte {
		t.Helper()
		resp, err := client.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: "c", ExecId: exec, Len: n})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetData()) > int(n) {
			t.Fatalf("asked for %d, got %d", n, len(resp.GetData()))
		}
		return resp.GetData()
	}
	var got []byte
	for len(got) < len(want) {
		b := read("e", 32<<10)
		if len(b) == 0 {
			t.Fatalf("the end after %d bytes of %d", len(got), len(want))
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("output out of order")
	}
	a.mu.Lock()
	for _, l := range a.lens {
		if l != readahead.FetchLen {
			t.Errorf("the agent was asked for %d bytes, want %d", l, readahead.FetchLen)
		}
	}
	a.mu.Unlock()
	// The read ahead of the end (an empty reply) is kept for the
	// process; a new exec of the same id must not get it.
	if _, err := client.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: "c", ExecId: "e"}); err != nil {
		t.Fatal(err)
	}
	if b := read("e", 32<<10); string(b) != "new e" {
		t.Fatalf("the new exec read %q, want %q", b, "new e")
	}
	// Removed, the container's processes are gone: NotFound, as the
	// agent says it, not what was read ahead.
	if _, err := client.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: "c", ExecId: "e", Len: 10}); status.Code(err) != codes.NotFound {
		t.Fatalf("after RemoveContainer: %v, want NotFound", err)
	}
}
