package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/relay"
)

// fakeHost plays cabind with VMs whose agents keep containers in memory:
// cabin.v1.Vms lists the VMs; calls with cabin-vm metadata go to that
// VM's fakeGuest (Containers, AgentService, Exec), as the relay sends them.
type fakeHost struct {
	socket string
	mu     sync.Mutex
	vms    map[string]*fakeGuest
	// stopped VMs are listed but not running.
	stopped []string
}

func startHost(t *testing.T) *fakeHost {
	t.Helper()
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &fakeHost{socket: filepath.Join(dir, "d.sock"), vms: map[string]*fakeGuest{}}
	lis, err := net.Listen("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	cabinv1.RegisterVmsServer(srv, &hostVms{h: h})
	containersv1.RegisterContainersServer(srv, &hostContainers{h: h})
	kata.RegisterAgentServiceServer(srv, &hostAgent{h: h})
	execv1.RegisterExecServer(srv, &hostExec{h: h})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return h
}

func (h *fakeHost) run(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	return runCLI(t, stdin, append([]string{"--socket", h.socket}, args...)...)
}

// vm adds a running VM.
func (h *fakeHost) vm(name string) *fakeGuest {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := &fakeGuest{name: name, containers: map[string]*fakeCtr{}}
	h.vms[name] = g
	return g
}

// guest is the VM a call's metadata names.
func (h *fakeHost) guest(ctx context.Context) (*fakeGuest, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(relay.MetadataVM)
	if len(v) != 1 {
		return nil, status.Error(codes.Unimplemented, "not relayed")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.vms[v[0]]
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "no VM %s", v[0])
	}
	if g.down {
		return nil, status.Errorf(codes.Unavailable, "VM %s does not answer", v[0])
	}
	return g, nil
}

// fakeGuest is one VM's agent.
type fakeGuest struct {
	name string
	down bool
	mu   sync.Mutex
	// lists counts the List calls.
	lists int
	// containers by id.
	containers map[string]*fakeCtr
	// signals are the signals sent, "id/exec:N".
	signals []string
	execs   []*kata.ExecProcessRequest
	// vmExecs are the commands run in the VM itself.
	vmExecs [][]string
	removed []string
}

// fakeCtr is a container: its init ignores SIGTERM when stubborn.
type fakeCtr struct {
	c        *containersv1.Container
	stubborn bool
	logs     []*containersv1.ContainerLogsResponse
	files    map[string][]byte
	exited   chan struct{}
	stats    *kata.StatsContainerResponse
	// procs are the exec'd processes' outputs and exit codes.
	procs map[string]*fakeProc
}

type fakeProc struct {
	out  []byte
	code int32
}

func (g *fakeGuest) add(id string, state containersv1.ContainerState) *fakeCtr {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := &fakeCtr{
		c:      &containersv1.Container{Id: id, State: state, Image: "busybox", Command: []string{"sh", "-c", "loop"}, Created: timestamppb.Now(), Started: timestamppb.Now(), Pid: 42, LogsKept: true},
		files:  map[string][]byte{},
		exited: make(chan struct{}),
		procs:  map[string]*fakeProc{},
	}
	if state == containersv1.ContainerState_CONTAINER_STATE_STOPPED {
		close(c.exited)
		c.c.Pid = 0
	}
	g.containers[id] = c
	return c
}

func (g *fakeGuest) ctr(id string) (*fakeCtr, error) {
	c := g.containers[id]
	if c == nil {
		return nil, status.Errorf(codes.NotFound, "container %q: not found", id)
	}
	return c, nil
}

// exit ends the container's init with code. Called with g.mu held.
func (c *fakeCtr) exit(code int32) {
	select {
	case <-c.exited:
	default:
		c.c.State = containersv1.ContainerState_CONTAINER_STATE_STOPPED
		c.c.ExitCode, c.c.Pid = code, 0
		close(c.exited)
	}
}

type hostVms struct {
	cabinv1.UnimplementedVmsServer
	h *fakeHost
}

func (s *hostVms) ListVms(ctx context.Context, req *cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	resp := &cabinv1.ListVmsResponse{}
	for name := range s.h.vms {
		resp.Vms = append(resp.Vms, &cabinv1.Vm{Name: name, State: cabinv1.VmState_VM_STATE_RUNNING})
	}
	for _, name := range s.h.stopped {
		resp.Vms = append(resp.Vms, &cabinv1.Vm{Name: name, State: cabinv1.VmState_VM_STATE_STOPPED})
	}
	return resp, nil
}

func (s *hostVms) GetVm(ctx context.Context, req *cabinv1.GetVmRequest) (*cabinv1.Vm, error) {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	if s.h.vms[req.GetName()] == nil {
		return nil, status.Errorf(codes.NotFound, "no VM %s", req.GetName())
	}
	return &cabinv1.Vm{Name: req.GetName(), State: cabinv1.VmState_VM_STATE_RUNNING}, nil
}

type hostContainers struct {
	containersv1.UnimplementedContainersServer
	h *fakeHost
}

func (s *hostContainers) List(ctx context.Context, _ *containersv1.ListContainersRequest) (*containersv1.ListContainersResponse, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lists++
	resp := &containersv1.ListContainersResponse{}
	for _, c := range g.containers {
		resp.Containers = append(resp.Containers, c.c)
	}
	return resp, nil
}

func (s *hostContainers) Logs(req *containersv1.ContainerLogsRequest, stream containersv1.Containers_LogsServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	g.mu.Lock()
	c, err := g.ctr(req.GetContainerId())
	var logs []*containersv1.ContainerLogsResponse
	if c != nil {
		logs = c.logs
		if req.Tail != nil {
			logs = logs[max(len(logs)-int(req.GetTail()), 0):]
		}
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	for _, l := range logs {
		if err := stream.Send(l); err != nil {
			return err
		}
	}
	if req.GetFollow() {
		<-c.exited
	}
	return nil
}

func (s *hostContainers) CopyOut(req *containersv1.CopyOutRequest, stream containersv1.Containers_CopyOutServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	g.mu.Lock()
	c, err := g.ctr(req.GetContainerId())
	var b []byte
	ok := false
	if c != nil {
		b, ok = c.files[req.GetPath()]
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	if !ok {
		return status.Errorf(codes.NotFound, "%s: no such file", req.GetPath())
	}
	stream.Send(&containersv1.CopyOutResponse{Kind: &containersv1.CopyOutResponse_Header{Header: &containersv1.CopyOutHeader{Size: int64(len(b)), Mode: 0o640}}})
	for len(b) > 0 {
		n := min(len(b), 1000)
		stream.Send(&containersv1.CopyOutResponse{Kind: &containersv1.CopyOutResponse_Data{Data: b[:n]}})
		b = b[n:]
	}
	return nil
}

func (s *hostContainers) CopyIn(stream containersv1.Containers_CopyInServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	var data []byte
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		data = append(data, m.GetData()...)
	}
	if int64(len(data)) != h.GetSize() {
		return status.Errorf(codes.InvalidArgument, "size: %d, but %d bytes came", h.GetSize(), len(data))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(h.GetContainerId())
	if err != nil {
		return err
	}
	c.files[h.GetPath()] = data
	return stream.SendAndClose(&containersv1.CopyInResponse{Written: int64(len(data))})
}

type hostAgent struct {
	kata.UnimplementedAgentServiceServer
	h *fakeHost
}

func (s *hostAgent) ExecProcess(ctx context.Context, req *kata.ExecProcessRequest) (*emptypb.Empty, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	g.execs = append(g.execs, req)
	argv := req.GetProcess().GetArgs()
	p := &fakeProc{}
	switch argv[0] {
	case "echo":
		p.out = []byte(strings.Join(argv[1:], " ") + "\n")
	case "exit":
		p.code = 7
	default:
		return nil, status.Errorf(codes.FailedPrecondition, "%s: not found", argv[0])
	}
	c.procs[req.GetExecId()] = p
	return &emptypb.Empty{}, nil
}

func (s *hostAgent) proc(ctx context.Context, id, eid string) (*fakeGuest, *fakeProc, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(id)
	if err != nil {
		return nil, nil, err
	}
	p := c.procs[eid]
	if p == nil {
		return nil, nil, status.Errorf(codes.NotFound, "process %q", eid)
	}
	return g, p, nil
}

func (s *hostAgent) ReadStdout(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	g, p, err := s.proc(ctx, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := p.out
	p.out = nil
	return &kata.ReadStreamResponse{Data: out}, nil
}

func (s *hostAgent) ReadStderr(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return &kata.ReadStreamResponse{}, nil
}

func (s *hostAgent) WaitProcess(ctx context.Context, req *kata.WaitProcessRequest) (*kata.WaitProcessResponse, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	c, err := g.ctr(req.GetContainerId())
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if eid := req.GetExecId(); eid != "" && eid != req.GetContainerId() {
		_, p, err := s.proc(ctx, req.GetContainerId(), eid)
		if err != nil {
			return nil, err
		}
		return &kata.WaitProcessResponse{Status: p.code}, nil
	}
	select {
	case <-c.exited:
		return &kata.WaitProcessResponse{Status: c.c.GetExitCode()}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (s *hostAgent) SignalProcess(ctx context.Context, req *kata.SignalProcessRequest) (*emptypb.Empty, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	g.signals = append(g.signals, req.GetContainerId()+"/"+req.GetExecId()+":"+syscall.Signal(req.GetSignal()).String())
	switch {
	case req.GetSignal() == uint32(syscall.SIGKILL):
		c.exit(137)
	case req.GetSignal() == uint32(syscall.SIGTERM) && !c.stubborn:
		c.exit(143)
	}
	return &emptypb.Empty{}, nil
}

func (s *hostAgent) RemoveContainer(ctx context.Context, req *kata.RemoveContainerRequest) (*emptypb.Empty, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	c.exit(137)
	delete(g.containers, req.GetContainerId())
	g.removed = append(g.removed, req.GetContainerId())
	return &emptypb.Empty{}, nil
}

func (s *hostAgent) StatsContainer(ctx context.Context, req *kata.StatsContainerRequest) (*kata.StatsContainerResponse, error) {
	g, err := s.h.guest(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st := c.stats
	if st == nil {
		return nil, status.Error(codes.Unimplemented, "no stats")
	}
	// Each sample, a further 100 ms of CPU.
	cpu := st.GetCgroupStats().GetCpuStats().GetCpuUsage()
	cpu.TotalUsage += 100e6
	return st, nil
}

type hostExec struct {
	execv1.UnimplementedExecServer
	h *fakeHost
}

func (s *hostExec) Exec(stream execv1.Exec_ExecServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	argv := req.GetStart().GetArgv()
	g.mu.Lock()
	g.vmExecs = append(g.vmExecs, argv)
	g.mu.Unlock()
	stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Stdout{Stdout: []byte("vm:" + strings.Join(argv, " ") + "\n")}})
	return stream.Send(&execv1.ExecResponse{Kind: &execv1.ExecResponse_Exit{Exit: &execv1.ExitStatus{Code: 3}}})
}
