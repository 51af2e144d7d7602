package concierge

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// lifecycleEnv serves concierge over fake VMs to callers chosen by uid
// (grpctest.AsUID; a call naming none is root's).
func lifecycleEnv(t *testing.T) (*vmmtest.Env, pb.VmConciergeClient) {
	t.Helper()
	e := vmmtest.New(t)
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{})) }, grpctest.UIDs()...)
	return e, pb.NewVmConciergeClient(cc)
}

// guestCalls records the calls made into fake guests.
type guestCalls struct {
	mu    sync.Mutex
	calls []string
}

func (g *guestCalls) record(key vmm.Key, method string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, key.Name+" "+method)
}

func (g *guestCalls) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.calls, ", ")
}

func TestSuspendResumeVm(t *testing.T) {
	e, c := lifecycleEnv(t)
	calls := &guestCalls{}
	e.GuestCall = calls.record
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "vm"}})
	ctx := context.Background()

	for i := 0; i < 2; i++ { // the second one succeeds too, doing nothing
		r, err := c.SuspendVm(ctx, &pb.SuspendVmRequest{Name: "vm"})
		if err != nil || !r.Success {
			t.Fatalf("SuspendVm #%d: %v, %v", i+1, r, err)
		}
	}
	if got := calls.String(); strings.Count(got, "PrepareToSuspend") != 1 {
		t.Errorf("guest calls %q: want it told once", got)
	}
	// Upstream's VmStatus has no suspended state: RUNNING, as upstream.
	info, err := c.GetVmInfo(ctx, &pb.GetVmInfoRequest{Name: "vm"})
	if err != nil || info.VmInfo.GetStatus() != pb.VmStatus_VM_STATUS_RUNNING {
		t.Errorf("GetVmInfo of a suspended VM: %v, %v", info, err)
	}
	list, err := c.ListVms(ctx, &pb.ListVmsRequest{})
	if err != nil || len(list.Vms) != 1 || list.Vms[0].Status != pb.VmStatus_VM_STATUS_RUNNING {
		t.Errorf("ListVms with a suspended VM: %v, %v", list, err)
	}
	// A suspended guest cannot answer: calls into it say so.
	ki, err := c.GetVmEnterpriseReportingInfo(ctx, &pb.GetVmEnterpriseReportingInfoRequest{VmName: "vm"})
	if err != nil || ki.Success || !strings.Contains(ki.FailureReason, "suspended") {
		t.Errorf("kernel version of a suspended VM: %v, %v", ki, err)
	}
	st, err := c.SyncVmTimes(ctx, &emptypb.Empty{})
	if err != nil || st.Requests != 1 || st.Failures != 1 || !strings.Contains(st.FailureReason[0], "suspended") {
		t.Errorf("SyncVmTimes with a suspended VM: %v, %v", st, err)
	}
	for i := 0; i < 2; i++ { // ResumeVm of a running VM succeeds too
		r, err := c.ResumeVm(ctx, &pb.ResumeVmRequest{Name: "vm"})
		if err != nil || !r.Success {
			t.Fatalf("ResumeVm #%d: %v, %v", i+1, r, err)
		}
	}
	// The clock is set after each resume, as upstream.
	if got := calls.String(); strings.Count(got, "SetTime") < 2 {
		t.Errorf("guest calls %q: want the clock set after each resume", got)
	}
	ki, err = c.GetVmEnterpriseReportingInfo(ctx, &pb.GetVmEnterpriseReportingInfoRequest{VmName: "vm"})
	if err != nil || !ki.Success || ki.VmKernelVersion != vmmtest.FakeKernel {
		t.Errorf("kernel version: %v, %v", ki, err)
	}
	// An unknown VM is no error to the caller, as upstream.
	if r, err := c.SuspendVm(ctx, &pb.SuspendVmRequest{Name: "ghost"}); err != nil || !r.Success {
		t.Errorf("SuspendVm of an unknown VM: %v, %v", r, err)
	}
	// Bad names are INVALID_ARGUMENT naming the field; another owner's
	// VM is not a user's.
	if _, err := c.SuspendVm(ctx, &pb.SuspendVmRequest{Name: "../x"}); status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "name:") {
		t.Errorf("bad name: %v", err)
	}
	if _, err := c.ResumeVm(grpctest.AsUID(1000), &pb.ResumeVmRequest{Name: "vm", OwnerId: "root"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another owner's VM: %v", err)
	}
}

// Every call on a VM still starting, or already stopping, answers at
// once, saying so.
func TestCallsOnStartingOrStoppingVm(t *testing.T) {
	e, c := lifecycleEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "stopping"}})
	e.Unready.Store(true)
	if _, _, err := e.M.Start(context.Background(), vmm.Spec{Key: vmm.Key{Name: "starting"}, CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	// The stopping VM's guest holds its Shutdown until the test ends.
	gate := make(chan struct{})
	e.ShutdownGate = gate
	stopped := make(chan error, 1)
	go func() { stopped <- e.M.Stop(context.Background(), vmm.Key{Name: "stopping"}) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if in, err := e.M.Get(vmm.Key{Name: "stopping"}); err == nil && in.State == vmm.StateStopping {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VM never got to stopping")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, name := range []string{"starting", "stopping"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sus, err := c.SuspendVm(ctx, &pb.SuspendVmRequest{Name: name})
		if err != nil || sus.Success || !strings.Contains(sus.FailureReason, name) {
			t.Errorf("SuspendVm of a %s VM: %v, %v", name, sus, err)
		}
		res, err := c.ResumeVm(ctx, &pb.ResumeVmRequest{Name: name})
		if err != nil || res.Success || !strings.Contains(res.FailureReason, name) {
			t.Errorf("ResumeVm of a %s VM: %v, %v", name, res, err)
		}
		u, err := c.SetUpVmUser(ctx, &pb.SetUpVmUserRequest{VmName: name, Username: "alice"})
		if err != nil || u.Success || !strings.Contains(u.FailureReason, name) {
			t.Errorf("SetUpVmUser on a %s VM: %v, %v", name, u, err)
		}
		k, err := c.GetVmEnterpriseReportingInfo(ctx, &pb.GetVmEnterpriseReportingInfoRequest{VmName: name})
		if err != nil || k.Success || !strings.Contains(k.FailureReason, name) {
			t.Errorf("GetVmEnterpriseReportingInfo of a %s VM: %v, %v", name, k, err)
		}
		info, err := c.GetVmInfo(ctx, &pb.GetVmInfoRequest{Name: name})
		if err != nil || !info.Success {
			t.Errorf("GetVmInfo of a %s VM: %v, %v", name, info, err)
		}
		if _, err := c.GetVmGpuCachePath(ctx, &pb.GetVmGpuCachePathRequest{Name: name}); name == "stopping" && status.Code(err) != codes.NotFound {
			t.Errorf("GetVmGpuCachePath of a stopping VM: %v", err)
		}
		if _, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE}); err != nil {
			t.Errorf("SetCrostiniVmType: %v", err)
		}
		cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.SyncVmTimes(ctx, &emptypb.Empty{})
	if err != nil || st.Requests != 2 || st.Failures != 2 {
		t.Errorf("SyncVmTimes with a starting and a stopping VM: %v, %v", st, err)
	}
	close(gate)
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v", err)
	}
}

func TestSetUpVmUser(t *testing.T) {
	e, c := lifecycleEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "vm"}})
	ctx := context.Background()
	uid := func(n uint32) *uint32 { return &n }
	r, err := c.SetUpVmUser(ctx, &pb.SetUpVmUserRequest{VmName: "vm", Username: "alice", GroupNames: []string{"audio"}})
	if err != nil || !r.Success || r.Username != "alice" {
		t.Errorf("new user: %v, %v", r, err)
	}
	// uid 5 is the guest's "games": upstream answers its name.
	r, err = c.SetUpVmUser(ctx, &pb.SetUpVmUserRequest{VmName: "vm", Username: "bob", Uid: uid(5)})
	if err != nil || r.Success || r.Username != "games" || !strings.Contains(r.FailureReason, "uid 5") {
		t.Errorf("taken uid: %v, %v", r, err)
	}
	for _, bad := range []*pb.SetUpVmUserRequest{
		{VmName: "vm", Username: ""},
		{VmName: "vm", Username: "Robert'); DROP TABLE"},
		{VmName: "vm", Username: "x", Uid: uid(0)},
		{VmName: "vm", Username: "x", GroupNames: []string{"wheel;reboot"}},
		{VmName: "../vm", Username: "x"},
	} {
		if _, err := c.SetUpVmUser(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
	if r, err := c.SetUpVmUser(ctx, &pb.SetUpVmUserRequest{VmName: "ghost", Username: "x"}); err != nil || r.Success || !strings.Contains(r.FailureReason, "ghost") {
		t.Errorf("unknown VM: %v, %v", r, err)
	}
}

// StopVmWithoutOwnerId stops the VMs of the name of every owner for
// root, of the user's own for a user.
func TestStopVmWithoutOwnerId(t *testing.T) {
	e, c := lifecycleEnv(t)
	for _, owner := range []string{"", "user-1000", "user-1001"} {
		e.Start(t, vmm.Spec{Key: vmm.Key{Owner: owner, Name: "dev"}})
	}
	e.Start(t, vmm.Spec{Key: vmm.Key{Owner: "user-1000", Name: "other"}})
	r, err := c.StopVmWithoutOwnerId(grpctest.AsUID(1000), &pb.StopVmRequest{Name: "dev"})
	if err != nil || !r.Success {
		t.Fatalf("user: %v, %v", r, err)
	}
	left := func() []string {
		var out []string
		for _, o := range []string{"", "user-1000", "user-1001"} {
			for _, in := range e.M.List(o) {
				out = append(out, in.Key.String())
			}
		}
		return out
	}
	if got := strings.Join(left(), " "); got != "dev user-1000/other user-1001/dev" {
		t.Errorf("after a user's stop: %s", got)
	}
	if r, err := c.StopVmWithoutOwnerId(context.Background(), &pb.StopVmRequest{Name: "dev"}); err != nil || !r.Success {
		t.Fatalf("root: %v, %v", r, err)
	}
	if got := strings.Join(left(), " "); got != "user-1000/other" {
		t.Errorf("after root's stop: %s", got)
	}
	for _, bad := range []*pb.StopVmRequest{{Name: ""}, {Name: "dev", OwnerId: "user-1000"}} {
		if _, err := c.StopVmWithoutOwnerId(context.Background(), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func TestSetCrostiniVmTypeAndLaunchAllowed(t *testing.T) {
	e, c := lifecycleEnv(t)
	ctx := context.Background()
	r, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE})
	if err != nil || r.Success || !strings.Contains(r.Reason, "never run") {
		t.Errorf("no termina yet: %v, %v", r, err)
	}
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: vmm.TerminaName}})
	if r, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE}); err != nil || r.Success {
		t.Errorf("while termina runs: %v, %v", r, err)
	}
	e.M.Stop(ctx, vmm.Key{Name: vmm.TerminaName})
	if r, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE}); err != nil || !r.Success {
		t.Errorf("stopped termina: %v, %v", r, err)
	}
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: vmm.TerminaName}})
	if info, err := c.GetVmInfo(ctx, &pb.GetVmInfoRequest{Name: vmm.TerminaName}); err != nil || info.VmInfo.GetVmType() != pb.VmInfo_BAGUETTE {
		t.Errorf("type reported: %v, %v", info, err)
	}
	if _, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: 42}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("type 42: %v", err)
	}
	if _, err := c.SetCrostiniVmType(grpctest.AsUID(1000), &pb.SetCrostiniVmTypeRequest{CryptohomeId: "root", VmType: pb.VmInfo_TERMINA}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("another owner's: %v", err)
	}
	// This host has memory to spare and a CPU its kernel says is safe.
	if a, err := c.GetVmLaunchAllowed(ctx, &pb.GetVmLaunchAllowedRequest{}); err != nil || !a.Allowed {
		t.Errorf("GetVmLaunchAllowed: %v, %v", a, err)
	}
}

// The calls for what this host cannot have refuse, naming what is
// missing.
func TestRefusals(t *testing.T) {
	_, c := lifecycleEnv(t)
	ctx := context.Background()
	reasons := map[string]func() (string, error){
		"StartArcVm": func() (string, error) {
			r, err := c.StartArcVm(ctx, &pb.StartArcVmRequest{Name: "arc"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"StartPluginVm": func() (string, error) {
			r, err := c.StartPluginVm(ctx, &pb.StartPluginVmRequest{Name: "pvm"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"InstallPflash": func() (string, error) {
			r, err := c.InstallPflash(ctx, &pb.InstallPflashRequest{VmName: "x"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"SwapVm": func() (string, error) {
			r, err := c.SwapVm(ctx, &pb.SwapVmRequest{Name: "x"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"ModifyFakePowerConfig": func() (string, error) {
			r, err := c.ModifyFakePowerConfig(ctx, &pb.ModifyFakePowerConfigRequest{Name: "x"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"MuteVmAudio": func() (string, error) {
			r, err := c.MuteVmAudio(ctx, &pb.MuteVmAudioRequest{Name: "x"})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
		"AttachKey": func() (string, error) {
			r, err := c.AttachKey(ctx, &pb.AttachKeyRequest{VmName: "x"})
			return r.GetReason() + ok(r.GetSuccess()), err
		},
		"GetVmMemoryManagementKillsConnection": func() (string, error) {
			r, err := c.GetVmMemoryManagementKillsConnection(ctx, &pb.GetVmMemoryManagementKillsConnectionRequest{})
			return r.GetFailureReason() + ok(r.GetSuccess()), err
		},
	}
	for name, call := range reasons {
		reason, err := call()
		if err != nil || len(reason) < 40 || strings.HasSuffix(reason, "!ok") {
			t.Errorf("%s: %q, %v", name, reason, err)
		}
	}
	for name, call := range map[string]func() error{
		"ArcVmCompleteBoot": func() error {
			_, err := c.ArcVmCompleteBoot(ctx, &pb.ArcVmCompleteBootRequest{})
			return err
		},
		"AddGroupPermissionMesa": func() error {
			_, err := c.AddGroupPermissionMesa(ctx, &pb.AddGroupPermissionMesaRequest{Name: "x"})
			return err
		},
		"GetBaguetteImageUrl": func() error { _, err := c.GetBaguetteImageUrl(ctx, &emptypb.Empty{}); return err },
	} {
		if err := call(); status.Code(err) != codes.FailedPrecondition || len(status.Convert(err).Message()) < 40 {
			t.Errorf("%s: %v, want FAILED_PRECONDITION with a reason", name, err)
		}
	}
}

// ok marks a refusal that claimed success.
func ok(success bool) string {
	if success {
		return "!ok"
	}
	return ""
}
