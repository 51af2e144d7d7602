package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
)

// fakeDaemon serves fakes of cabind's services on a unix socket in a temp
// dir. Each test sets the handlers it needs; the others answer
// Unimplemented, as the embedded servers do.
type fakeDaemon struct {
	socket    string
	concierge *fakeConcierge
	vms       *fakeVms
	events    *fakeEvents
	exec      *fakeExec
	images    *fakeImages
	agent     *fakeAgent
	forwards  *fakeForwards
}

func startDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	// Not t.TempDir: its long path could push the socket past the 107
	// bytes a unix socket path may have.
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &fakeDaemon{
		socket:    filepath.Join(dir, "d.sock"),
		concierge: &fakeConcierge{},
		vms:       &fakeVms{},
		events:    newFakeEvents(),
		exec:      &fakeExec{},
		images:    &fakeImages{},
		agent:     newFakeAgent(),
		forwards:  &fakeForwards{},
	}
	lis, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	concierge.RegisterVmConciergeServer(srv, d.concierge)
	cabinv1.RegisterVmsServer(srv, d.vms)
	cabinv1.RegisterEventsServer(srv, d.events)
	execv1.RegisterExecServer(srv, d.exec)
	cabinv1.RegisterImagesServer(srv, d.images)
	kata.RegisterAgentServiceServer(srv, d.agent)
	cabinv1.RegisterForwardsServer(srv, d.forwards)
	go srv.Serve(lis)
	// Stop, not GracefulStop: a test may leave a stream open on purpose.
	t.Cleanup(srv.Stop)
	return d
}

// result is what one cabin run left behind.
type result struct {
	code           int
	stdout, stderr string
}

// run runs cabin against the fake daemon, as main would with args.
func (d *fakeDaemon) run(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	return runCLI(t, stdin, append([]string{"--socket", d.socket}, args...)...)
}

func runCLI(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var stdout, stderr syncBuffer
	noEnv := func(string) string { return "" }
	code := run(ctx, args, stdin, &stdout, &stderr, noEnv)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// syncBuffer is a bytes.Buffer that a test may read while cabin writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type fakeConcierge struct {
	concierge.UnimplementedVmConciergeServer
	stopVM    func(*concierge.StopVmRequest) (*concierge.SuccessFailureResponse, error)
	getVMInfo func(*concierge.GetVmInfoRequest) (*concierge.GetVmInfoResponse, error)
	getVMLogs func(*concierge.GetVmLogsRequest) (*concierge.GetVmLogsResponse, error)
}

func (f *fakeConcierge) StopVm(ctx context.Context, req *concierge.StopVmRequest) (*concierge.SuccessFailureResponse, error) {
	if f.stopVM == nil {
		return f.UnimplementedVmConciergeServer.StopVm(ctx, req)
	}
	return f.stopVM(req)
}

func (f *fakeConcierge) GetVmInfo(ctx context.Context, req *concierge.GetVmInfoRequest) (*concierge.GetVmInfoResponse, error) {
	if f.getVMInfo == nil {
		return f.UnimplementedVmConciergeServer.GetVmInfo(ctx, req)
	}
	return f.getVMInfo(req)
}

func (f *fakeConcierge) GetVmLogs(ctx context.Context, req *concierge.GetVmLogsRequest) (*concierge.GetVmLogsResponse, error) {
	if f.getVMLogs == nil {
		return f.UnimplementedVmConciergeServer.GetVmLogs(ctx, req)
	}
	return f.getVMLogs(req)
}

type fakeVms struct {
	cabinv1.UnimplementedVmsServer
	mu       sync.Mutex
	requests []*cabinv1.StartVmRequest
	startVM  func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error)
	logs     func(*cabinv1.LogsRequest, cabinv1.Vms_LogsServer) error
	listVMs  func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error)
	getVM    func(*cabinv1.GetVmRequest) (*cabinv1.Vm, error)
}

func (f *fakeVms) ListVms(ctx context.Context, req *cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
	if f.listVMs == nil {
		return f.UnimplementedVmsServer.ListVms(ctx, req)
	}
	return f.listVMs(req)
}

func (f *fakeVms) GetVm(ctx context.Context, req *cabinv1.GetVmRequest) (*cabinv1.Vm, error) {
	if f.getVM == nil {
		return f.UnimplementedVmsServer.GetVm(ctx, req)
	}
	return f.getVM(req)
}

func (f *fakeVms) StartVm(ctx context.Context, req *cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	if f.startVM == nil {
		return f.UnimplementedVmsServer.StartVm(ctx, req)
	}
	return f.startVM(req)
}

func (f *fakeVms) Logs(req *cabinv1.LogsRequest, stream cabinv1.Vms_LogsServer) error {
	if f.logs == nil {
		return f.UnimplementedVmsServer.Logs(req, stream)
	}
	return f.logs(req, stream)
}

func (f *fakeVms) calls() []*cabinv1.StartVmRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*cabinv1.StartVmRequest(nil), f.requests...)
}

// fakeEvents broadcasts every published event to every watcher, without
// filtering, so tests see that cabin checks which VM an event is about.
type fakeEvents struct {
	cabinv1.UnimplementedEventsServer
	mu         sync.Mutex
	watchers   []chan *cabinv1.Event
	requests   []*cabinv1.WatchRequest
	subscribed chan struct{}
	end        chan struct{}
	endOnce    sync.Once
	// noHeader plays a daemon that sends headers only with the first
	// event.
	noHeader bool
	// endErr is what streams end with at endStreams.
	endErr error
}

func newFakeEvents() *fakeEvents {
	return &fakeEvents{subscribed: make(chan struct{}, 16), end: make(chan struct{})}
}

func (f *fakeEvents) Watch(req *cabinv1.WatchRequest, stream cabinv1.Events_WatchServer) error {
	ch := make(chan *cabinv1.Event, 64)
	f.mu.Lock()
	f.watchers = append(f.watchers, ch)
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	// Headers after subscribing: the signal cabin vm start waits for
	// before it starts the VM.
	if !f.noHeader {
		if err := stream.SendHeader(metadata.MD{}); err != nil {
			return err
		}
	}
	f.subscribed <- struct{}{}
	for {
		select {
		case ev := <-ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-f.end:
			// Deliver what was published before the end.
			for {
				select {
				case ev := <-ch:
					if err := stream.Send(ev); err != nil {
						return err
					}
				default:
					return f.endErr
				}
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (f *fakeEvents) publish(evs ...*cabinv1.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range evs {
		for _, w := range f.watchers {
			w <- ev
		}
	}
}

// endStreams makes every Watch return, as a daemon shutting down would.
func (f *fakeEvents) endStreams() { f.endOnce.Do(func() { close(f.end) }) }

func (f *fakeEvents) watchRequests() []*cabinv1.WatchRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*cabinv1.WatchRequest(nil), f.requests...)
}

type fakeExec struct {
	execv1.UnimplementedExecServer
	// mu guards handle for tests whose cabin runs in another process: the
	// race detector sees no order in what passes through the socket.
	mu     sync.Mutex
	handle func(execv1.Exec_ExecServer) error
}

func (f *fakeExec) Exec(stream execv1.Exec_ExecServer) error {
	f.mu.Lock()
	handle := f.handle
	f.mu.Unlock()
	if handle == nil {
		return f.UnimplementedExecServer.Exec(stream)
	}
	return handle(stream)
}

type fakeImages struct {
	cabinv1.UnimplementedImagesServer
	build func(*cabinv1.BuildImageRequest, cabinv1.Images_BuildServer) error
}

func (f *fakeImages) Build(req *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
	if f.build == nil {
		return f.UnimplementedImagesServer.Build(req, stream)
	}
	return f.build(req, stream)
}

type fakeForwards struct {
	cabinv1.UnimplementedForwardsServer
	add    func(*cabinv1.AddForwardRequest) (*cabinv1.Forward, error)
	list   func(*cabinv1.ListForwardsRequest) (*cabinv1.ListForwardsResponse, error)
	remove func(*cabinv1.RemoveForwardRequest) (*cabinv1.RemoveForwardResponse, error)
}

func (f *fakeForwards) AddForward(ctx context.Context, req *cabinv1.AddForwardRequest) (*cabinv1.Forward, error) {
	if f.add == nil {
		return f.UnimplementedForwardsServer.AddForward(ctx, req)
	}
	return f.add(req)
}

func (f *fakeForwards) ListForwards(ctx context.Context, req *cabinv1.ListForwardsRequest) (*cabinv1.ListForwardsResponse, error) {
	if f.list == nil {
		return f.UnimplementedForwardsServer.ListForwards(ctx, req)
	}
	return f.list(req)
}

func (f *fakeForwards) RemoveForward(ctx context.Context, req *cabinv1.RemoveForwardRequest) (*cabinv1.RemoveForwardResponse, error) {
	if f.remove == nil {
		return f.UnimplementedForwardsServer.RemoveForward(ctx, req)
	}
	return f.remove(req)
}
