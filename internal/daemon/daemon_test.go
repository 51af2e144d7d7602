package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// callerHealth reports the caller's uid as its agent version.
type callerHealth struct{ kata.UnimplementedHealthServer }

func (callerHealth) Version(ctx context.Context, _ *kata.CheckRequest) (*kata.VersionCheckResponse, error) {
	c := callerOf(ctx)
	if c == nil {
		return nil, status.Error(codes.Internal, "no caller")
	}
	return &kata.VersionCheckResponse{AgentVersion: strconv.FormatUint(uint64(c.UID), 10)}, nil
}

func TestPeerCredsIdentifyCaller(t *testing.T) {
	root := statedirtest.New(t)
	sock := filepath.Join(root.Dir(), "s.sock")
	lis, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(peerCreds{}))
	kata.RegisterHealthServer(srv, callerHealth{})
	go srv.Serve(lis)
	defer srv.Stop()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := kata.NewHealthClient(cc).Version(context.Background(), &kata.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.AgentVersion != strconv.Itoa(os.Getuid()) {
		t.Errorf("caller uid %q, want %d", resp.AgentVersion, os.Getuid())
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v, %v", st.Mode(), err)
	}
}

func TestListenRefusesLiveSocketReplacesStale(t *testing.T) {
	root := statedirtest.New(t)
	sock := filepath.Join(root.Dir(), "s.sock")
	live, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen(sock); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second listen on a live socket: %v", err)
	}
	live.Close()
	os.WriteFile(sock, nil, 0o600) // a stale leftover
	again, err := listen(sock)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	again.Close()
	if _, err := listen("/" + strings.Repeat("x", 120)); err == nil {
		t.Error("accepted a socket path longer than sun_path")
	}
}

func TestOneDaemonPerStateDir(t *testing.T) {
	root := statedirtest.New(t)
	ctx := context.Background()
	unlock, err := lockStateDir(ctx, root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(ctx, root, 100*time.Millisecond, nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second lock: %v", err)
	}
	// A cabind starting while the last one exits waits for it.
	time.AfterFunc(200*time.Millisecond, unlock)
	unlock2, err := lockStateDir(ctx, root, time.Minute, nil)
	if err != nil {
		t.Fatalf("lock while the holder lets go: %v", err)
	}
	unlock2()
}

// failingLauncher cannot start VMs.
type failingLauncher struct{}

func (failingLauncher) Launch(context.Context, hypervisor.Config) (hypervisor.VM, error) {
	return nil, errors.New("qemu-system-x86_64: could not load kernel")
}

func (failingLauncher) Adopt(context.Context, statedir.VMDir, uint64) (hypervisor.VM, error) {
	return nil, hypervisor.ErrNotRunning
}

type stubImages struct{ kernel string }

func (s stubImages) Ensure(context.Context, func(string)) (vmm.Image, error) {
	return vmm.Image{Kernel: s.kernel}, nil
}

func (s stubImages) Rootfs(context.Context, func(string)) (string, error) {
	return "", nil
}

func newConcierge(t *testing.T) (*conciergeServer, statedir.Root) {
	t.Helper()
	root := statedirtest.New(t)
	kernel := filepath.Join(root.Dir(), "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	m, err := vmm.New(vmm.Options{
		Root: root, Launcher: failingLauncher{}, Images: stubImages{kernel},
		Guests: channel.NewServer(discard()), Accel: hypervisor.AccelTCG,
		Host: vmm.Host{CPUs: 2, MemoryMiB: 1024}, DefaultMemoryMiB: 256, Log: discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return &conciergeServer{m: m}, root
}

func TestStartVmReportsFailures(t *testing.T) {
	c, _ := newConcierge(t)
	ctx := context.Background()

	// A VM that cannot start is a response with success=false.
	resp, err := c.StartVm(ctx, &concierge.StartVmRequest{Name: "vm", Cpus: 1})
	if err != nil {
		t.Fatalf("launch failure as an RPC error: %v", err)
	}
	if resp.Success || !strings.Contains(resp.FailureReason, "could not load kernel") || resp.Status != concierge.VmStatus_VM_STATUS_FAILURE {
		t.Errorf("response %v", resp)
	}

	// Bad input is INVALID_ARGUMENT naming the field.
	_, err = c.StartVm(ctx, &concierge.StartVmRequest{Name: "..", Cpus: 1})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "name:") {
		t.Errorf("bad name: %v", err)
	}
	// What cabin cannot honour yet is refused, not ignored.
	_, err = c.StartVm(ctx, &concierge.StartVmRequest{Name: "vm", Cpus: 1, Disks: []*concierge.DiskImage{{Path: "/x"}}})
	if s := status.Convert(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "disks") {
		t.Errorf("disks: %v", err)
	}
	// The extension's own fields are checked too.
	v := &vmsServer{c: c}
	_, err = v.StartVm(ctx, &cabinv1.StartVmRequest{Request: &concierge.StartVmRequest{Name: "vm", Cpus: 1}, MemoryMib: 32})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "memory_mib:") {
		t.Errorf("memory: %v", err)
	}
	_, err = v.StartVm(ctx, &cabinv1.StartVmRequest{Request: &concierge.StartVmRequest{Name: "vm", Cpus: 1}, KernelPath: "/no/such/vmlinux"})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "kernel_path:") {
		t.Errorf("kernel: %v", err)
	}
	if _, err := v.StartVm(ctx, &cabinv1.StartVmRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no request: %v", err)
	}
}

func TestUnknownVMAnswers(t *testing.T) {
	c, _ := newConcierge(t)
	ctx := context.Background()
	info, err := c.GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: "ghost"})
	if err != nil || info.Success {
		t.Errorf("GetVmInfo of an unknown VM: %v, %v", info, err)
	}
	stop, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: "ghost"})
	if err != nil || !stop.Success {
		t.Errorf("StopVm of an unknown VM: %v, %v", stop, err)
	}
	if _, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: ""}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("StopVm without a name: %v", err)
	}
	list, err := c.ListVms(ctx, &concierge.ListVmsRequest{})
	if err != nil || !list.Success || len(list.Vms) != 0 {
		t.Errorf("ListVms: %v, %v", list, err)
	}
	if _, err := c.GetVmLogs(ctx, &concierge.GetVmLogsRequest{Name: "ghost"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetVmLogs of an unknown VM: %v", err)
	}
}

func TestGetVmLogsIsValidUTF8(t *testing.T) {
	c, root := newConcierge(t)
	dir := root.VM(statedir.VMID("", "noisy"))
	os.MkdirAll(dir.Path(), 0o700)
	os.WriteFile(dir.Record(), []byte("{}"), 0o600)
	os.WriteFile(dir.ConsoleLog(), []byte("boot \xff\xfe ok\n"), 0o600)
	resp, err := c.GetVmLogs(context.Background(), &concierge.GetVmLogsRequest{Name: "noisy"})
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.ValidString(resp.Log) || !strings.Contains(resp.Log, "ok") {
		t.Errorf("log %q", resp.Log)
	}
	if _, err := proto.Marshal(resp); err != nil {
		t.Errorf("response does not marshal: %v", err)
	}
}

func TestEventsCarryUpstreamSignals(t *testing.T) {
	info := vmm.Info{Key: vmm.Key{Owner: "o", Name: "n"}, State: vmm.StateRunning, PID: 7, CID: 33, MemoryMiB: 256}
	now := time.Now()
	started := event(vmm.Event{Kind: vmm.EventStarted, Time: now, Info: info})
	if s := started.GetVmStarted(); s == nil || s.Name != "n" || s.OwnerId != "o" || s.VmInfo.GetPid() != 7 ||
		s.VmInfo.GetCid() != 33 || s.VmInfo.GetAllocatedMemory() != 256<<20 || s.Status != concierge.VmStatus_VM_STATUS_RUNNING {
		t.Errorf("started: %v", started)
	}
	if !started.GetTime().AsTime().Equal(now) {
		t.Errorf("time %v, want %v", started.GetTime().AsTime(), now)
	}
	for reason, want := range map[vmm.StopReason]concierge.VmStopReason{
		vmm.StopExited:       concierge.VmStopReason_VM_EXITED,
		vmm.StopRequested:    concierge.VmStopReason_STOP_VM_REQUESTED,
		vmm.StopAllRequested: concierge.VmStopReason_STOP_ALL_VMS_REQUESTED,
	} {
		e := event(vmm.Event{Kind: vmm.EventStopped, Info: info, Reason: reason})
		if got := e.GetVmStopped(); got.GetReason() != want || got.GetCid() != 33 {
			t.Errorf("stopped %v: %v", reason, e)
		}
	}
	if e := event(vmm.Event{Kind: vmm.EventStartingUp, Info: info}); e.GetVmStartingUp().GetCid() != 33 {
		t.Errorf("starting up: %v", e)
	}
	if e := event(vmm.Event{Kind: vmm.EventStopping, Info: info}); e.GetVmStopping().GetName() != "n" {
		t.Errorf("stopping: %v", e)
	}
}
