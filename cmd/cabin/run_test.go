package main

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/relay"
)

// fakeAgent is an AgentService with one container process: its output is
// served from stdout/stderr in reads of at most the asked length, then
// empty reads once exited is closed; the wait returns status.
type fakeAgent struct {
	kata.UnimplementedAgentServiceServer
	createErr error

	mu       sync.Mutex
	calls    []string
	create   *kata.CreateContainerRequest
	vm       string
	stdin    strings.Builder
	signals  []uint32
	stdout   []byte
	stderr   []byte
	exitCode int32
	signal   int32 // the process was killed by it: reported as Kata does
	exited   chan struct{}
	exitOnce sync.Once
}

func newFakeAgent() *fakeAgent { return &fakeAgent{exited: make(chan struct{})} }

func (f *fakeAgent) record(ctx context.Context, call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(relay.MetadataVM)) > 0 {
		f.vm = md.Get(relay.MetadataVM)[0]
	}
}

func (f *fakeAgent) exit() { f.exitOnce.Do(func() { close(f.exited) }) }

func (f *fakeAgent) CreateContainer(ctx context.Context, req *kata.CreateContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "create")
	f.mu.Lock()
	f.create = req
	f.mu.Unlock()
	if f.createErr != nil {
		return nil, f.createErr
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) StartContainer(ctx context.Context, req *kata.StartContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "start")
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) read(ctx context.Context, buf *[]byte, n uint32) (*kata.ReadStreamResponse, error) {
	f.mu.Lock()
	if len(*buf) > 0 {
		k := min(int(n), len(*buf))
		data := (*buf)[:k]
		*buf = (*buf)[k:]
		f.mu.Unlock()
		return &kata.ReadStreamResponse{Data: data}, nil
	}
	f.mu.Unlock()
	select {
	case <-f.exited:
		return &kata.ReadStreamResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) ReadStdout(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return f.read(ctx, &f.stdout, req.GetLen())
}

func (f *fakeAgent) ReadStderr(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return f.read(ctx, &f.stderr, req.GetLen())
}

func (f *fakeAgent) WriteStdin(ctx context.Context, req *kata.WriteStreamRequest) (*kata.WriteStreamResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Take at most 2 bytes a call, so the CLI must write the rest again.
	n := min(2, len(req.GetData()))
	f.stdin.Write(req.GetData()[:n])
	return &kata.WriteStreamResponse{Len: uint32(n)}, nil
}

func (f *fakeAgent) CloseStdin(ctx context.Context, req *kata.CloseStdinRequest) (*emptypb.Empty, error) {
	f.record(ctx, "close-stdin")
	f.exit()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) SignalProcess(ctx context.Context, req *kata.SignalProcessRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	f.signals = append(f.signals, req.GetSignal())
	f.mu.Unlock()
	f.exit()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) WaitProcess(ctx context.Context, req *kata.WaitProcessRequest) (*kata.WaitProcessResponse, error) {
	select {
	case <-f.exited:
		f.record(ctx, "wait")
		if f.signal != 0 {
			grpc.SetTrailer(ctx, metadata.Pairs(kata.ExitSignalTrailer, strconv.Itoa(int(f.signal))))
			return &kata.WaitProcessResponse{Status: f.signal}, nil
		}
		return &kata.WaitProcessResponse{Status: f.exitCode}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) RemoveContainer(ctx context.Context, req *kata.RemoveContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "remove")
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func TestRunOutputExitCodeAndSpec(t *testing.T) {
	d := startDaemon(t)
	d.agent.stdout = []byte(strings.Repeat("out", 20000)) // more than one read
	d.agent.stderr = []byte("warning\n")
	d.agent.exitCode = 3
	d.agent.exit()
	r := d.run(t, nil, "run", "--name", "c1", "web", "--", "sh", "-c", "exit 3")
	if r.code != 3 {
		t.Fatalf("exit code %d, want 3; stderr:\n%s", r.code, r.stderr)
	}
	if r.stdout != strings.Repeat("out", 20000) || r.stderr != "warning\n" {
		t.Errorf("stdout %d bytes, stderr %q", len(r.stdout), r.stderr)
	}
	if got, want := d.agent.callList(), []string{"create", "start", "wait", "remove"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if d.agent.vm != "web" {
		t.Errorf("relayed to VM %q, want web", d.agent.vm)
	}
	req := d.agent.create
	if req.GetContainerId() != "c1" || req.GetExecId() != "c1" {
		t.Errorf("ids %q/%q", req.GetContainerId(), req.GetExecId())
	}
	spec := req.GetOCI()
	if got := spec.GetProcess().GetArgs(); !slices.Equal(got, []string{"sh", "-c", "exit 3"}) {
		t.Errorf("args %q", got)
	}
	if spec.GetProcess().GetTerminal() {
		t.Error("terminal without -t")
	}
	if root := spec.GetRoot(); root.GetPath() != rootfsMount+"/"+bootcfg.RootfsBusybox || !root.GetReadonly() {
		t.Errorf("root %v", root)
	}
	st := req.GetStorages()
	if len(st) != 1 || st[0].GetDriver() != "9p" || st[0].GetSource() != bootcfg.RootfsTag || st[0].GetMountPoint() != rootfsMount {
		t.Errorf("storages %v", st)
	}
}

func TestRunStdinWrittenInFull(t *testing.T) {
	d := startDaemon(t)
	r := d.run(t, strings.NewReader("hello, container"), "run", "-i", "web", "cat")
	if r.code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", r.code, r.stderr)
	}
	if got := d.agent.stdin.String(); got != "hello, container" {
		t.Errorf("stdin %q", got)
	}
	if id := d.agent.create.GetContainerId(); !containerIDPattern.MatchString(id) || !strings.HasPrefix(id, "run-") {
		t.Errorf("generated container id %q", id)
	}
}

func TestRunForwardsSignals(t *testing.T) {
	d := startDaemon(t)
	d.agent.signal = int32(syscall.SIGINT)
	go func() {
		for !slices.Contains(d.agent.callList(), "start") {
			syscall.Nanosleep(&syscall.Timespec{Nsec: 1e6}, nil)
		}
		syscall.Kill(syscall.Getpid(), syscall.SIGINT)
	}()
	r := d.run(t, nil, "run", "web", "sleep", "100")
	if r.code != 130 {
		t.Errorf("exit code %d, want 130; stderr:\n%s", r.code, r.stderr)
	}
	if !slices.Equal(d.agent.signals, []uint32{uint32(syscall.SIGINT)}) {
		t.Errorf("signals %v", d.agent.signals)
	}
}

func TestRunCreateFails(t *testing.T) {
	d := startDaemon(t)
	d.agent.createErr = status.Error(codes.InvalidArgument, "storage: no share tagged cabinRootfs")
	r := d.run(t, nil, "run", "web", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "no share tagged cabinRootfs") {
		t.Errorf("got %+v", r)
	}
	// Nothing was made, so nothing is removed.
	if got := d.agent.callList(); !slices.Equal(got, []string{"create"}) {
		t.Errorf("calls %v", got)
	}
}

func TestRunBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"run"},
		{"run", "web"},
		{"run", "--rootfs", "../etc", "web", "true"},
		{"run", "--rootfs", "", "web", "true"},
		{"run", "--name", "-x", "web", "true"},
		{"run", "--name", "a/b", "web", "true"},
		{"run", "--name", strings.Repeat("a", 65), "web", "true"},
	} {
		d := startDaemon(t)
		r := d.run(t, nil, args...)
		if r.code != exitUsage {
			t.Errorf("%q: exit code %d, want %d; stderr:\n%s", args, r.code, exitUsage, r.stderr)
		}
		if calls := d.agent.callList(); len(calls) != 0 {
			t.Errorf("%q: calls %v, want none", args, calls)
		}
	}
}

func TestRunExitStatus(t *testing.T) {
	for _, c := range []struct {
		status  int32
		trailer metadata.MD
		want    int
	}{
		{0, nil, 0},
		{9, nil, 9}, // exit 9: no trailer
		{9, metadata.Pairs(kata.ExitSignalTrailer, "9"), 137},
		{15, metadata.Pairs(kata.ExitSignalTrailer, "bad"), 15},
		{300, nil, 255},
		{-1, nil, 255},
	} {
		if got := exitStatus(c.status, c.trailer); got != c.want {
			t.Errorf("exitStatus(%d, %v) = %d, want %d", c.status, c.trailer, got, c.want)
		}
	}
}
