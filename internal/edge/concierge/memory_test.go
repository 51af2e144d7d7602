package concierge

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

const mib = 1 << 20

// memoryEnv is a running 512 MiB fake VM "vm" and a concierge client.
func memoryEnv(t *testing.T) (*vmmtest.Env, pb.VmConciergeClient, vmm.Key) {
	t.Helper()
	e := vmmtest.New(t)
	key := vmm.Key{Name: "vm"}
	e.Start(t, vmm.Spec{Key: key, MemoryMiB: 512})
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{})) }, grpctest.UIDs()...)
	return e, pb.NewVmConciergeClient(cc), key
}

// eventually waits (boundedly) for cond; it asserts no timing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), field+":") {
		t.Errorf("%s: %v, want INVALID_ARGUMENT naming %s", what, err, field)
	}
}

func TestGetBalloonInfo(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	e.SetGuestMemory(t, key, 100*mib, 50*mib)
	resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "vm"})
	if err != nil || !resp.Success {
		t.Fatalf("GetBalloonInfo: %v, %v", resp, err)
	}
	want := &pb.BalloonInfo{AvailableMemory: 412 * mib, FreeMemory: 362 * mib, BalloonSize: 0}
	if got := resp.BalloonInfo; got.AvailableMemory != want.AvailableMemory || got.FreeMemory != want.FreeMemory || got.BalloonSize != want.BalloonSize {
		t.Errorf("balloon info %v, want %v", got, want)
	}

	// Not there, or a guest that reports nothing: success=false, as
	// upstream answers.
	if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "other"}); err != nil || resp.Success {
		t.Errorf("a VM that is not there: %v, %v", resp, err)
	}
	e.SetBalloonSilent(t, key, true)
	if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "vm"}); err != nil || resp.Success {
		t.Errorf("a silent guest: %v, %v", resp, err)
	}
	_, err = c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "../x"})
	wantInvalid(t, "a bad name", err, "name")
}

func TestAdjustVmBalloon(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	adjust := func(op string, params ...string) (*pb.SuccessFailureResponse, error) {
		return c.AdjustVm(ctx, &pb.AdjustVmRequest{Name: "vm", Operation: op, Params: params})
	}
	if resp, err := adjust("balloon", strconv.Itoa(100*mib)); err != nil || !resp.Success {
		t.Fatalf("balloon 100 MiB: %v, %v", resp, err)
	}
	if b := e.Balloon(t, key); b.Target != 100*mib || b.Size != 100*mib {
		t.Errorf("balloon after 100 MiB: %+v", b)
	}
	if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "vm"}); err != nil || resp.BalloonInfo.GetBalloonSize() != 100*mib {
		t.Errorf("GetBalloonInfo after 100 MiB: %v, %v", resp, err)
	}
	// memsize is what the guest keeps.
	if resp, err := adjust("memsize", "400"); err != nil || !resp.Success {
		t.Fatalf("memsize 400: %v, %v", resp, err)
	}
	if b := e.Balloon(t, key); b.Target != 112*mib {
		t.Errorf("balloon after memsize 400: %d MiB, want 112", b.Target/mib)
	}

	// Bad sizes change nothing.
	before := len(e.Balloon(t, key).Targets)
	for _, tc := range []struct {
		op, param, field string
	}{
		{"balloon", strconv.Itoa(512 * mib), "params[0]"},
		{"balloon", strconv.Itoa(449 * mib), "params[0]"},
		{"balloon", "-1", "params[0]"},
		{"balloon", "1e9", "params[0]"},
		{"balloon", "99999999999999999999999", "params[0]"},
		{"memsize", "513", "params[0]"},
		{"memsize", "63", "params[0]"},
		{"memsize", "0x100", "params[0]"},
	} {
		_, err := adjust(tc.op, tc.param)
		wantInvalid(t, tc.op+" "+tc.param, err, tc.field)
	}
	_, err := adjust("balloon")
	wantInvalid(t, "no parameter", err, "params")
	_, err = adjust("memsize", "100", "200")
	wantInvalid(t, "two parameters", err, "params")
	if after := len(e.Balloon(t, key).Targets); after != before {
		t.Errorf("refused sizes set %d targets", after-before)
	}

	// Operations: upstream's answer for unknown ones, a reason for
	// Plugin VM ones.
	for op, want := range map[string]string{
		"frobnicate":         "unrecognized operation",
		"":                   "unrecognized operation",
		"rename":             "Plugin VM",
		"pvm.shared-profile": "Plugin VM",
	} {
		resp, err := adjust(op, "x")
		if err != nil || resp.Success || !strings.Contains(resp.FailureReason, want) {
			t.Errorf("operation %q: %v, %v; want success=false saying %q", op, resp, err, want)
		}
	}
	resp, err := c.AdjustVm(ctx, &pb.AdjustVmRequest{Name: "nope", Operation: "memsize", Params: []string{"100"}})
	if err != nil || resp.Success {
		t.Errorf("memsize of a VM that is not there: %v, %v", resp, err)
	}
}

// The timer keeps the policy's floor: a size set by hand.
func TestBalloonFloorHoldsUnderTheTimer(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	e.SetGuestMemory(t, key, 420*mib, 0)
	if resp, err := c.AdjustVm(ctx, &pb.AdjustVmRequest{Name: "vm", Operation: "balloon", Params: []string{strconv.Itoa(40 * mib)}}); err != nil || !resp.Success {
		t.Fatalf("balloon: %v, %v", resp, err)
	}
	e.M.BalanceBalloons(ctx)
	// The guest lacks memory (52 MiB available, 64 reserved), yet the
	// balloon stays at the size set by hand.
	if b := e.Balloon(t, key); b.Target != 40*mib {
		t.Errorf("balloon %d MiB, want the floor of 40", b.Target/mib)
	}
}

func TestReclaimVmMemory(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	e.SetGuestMemory(t, key, 100*mib, 200*mib)
	resp, err := c.ReclaimVmMemory(ctx, &pb.ReclaimVmMemoryRequest{Name: "vm"})
	if err != nil || !resp.Success {
		t.Fatalf("ReclaimVmMemory: %v, %v", resp, err)
	}
	b := e.Balloon(t, key)
	if b.Drops != 1 {
		t.Errorf("guest dropped its caches %d times, want 1", b.Drops)
	}
	// 412 MiB available once the caches went, 64 kept: 348 into the
	// balloon, then all of it back.
	if want := []int64{348 * mib, 0}; len(b.Targets) != 2 || b.Targets[0] != want[0] || b.Targets[1] != want[1] {
		t.Errorf("targets %v, want %v", b.Targets, want)
	}

	// A page limit under the policy's threshold: the caches go, the
	// balloon stays.
	resp, err = c.ReclaimVmMemory(ctx, &pb.ReclaimVmMemoryRequest{Name: "vm", PageLimit: 100})
	if err != nil || !resp.Success {
		t.Fatalf("ReclaimVmMemory with a page limit: %v, %v", resp, err)
	}
	if b := e.Balloon(t, key); b.Drops != 2 || len(b.Targets) != 2 {
		t.Errorf("with a small page limit: %+v", b)
	}
	_, err = c.ReclaimVmMemory(ctx, &pb.ReclaimVmMemoryRequest{Name: "vm", PageLimit: -1})
	wantInvalid(t, "a negative page limit", err, "page_limit")
	if resp, err := c.ReclaimVmMemory(ctx, &pb.ReclaimVmMemoryRequest{Name: "nope"}); err != nil || resp.Success || resp.FailureReason == "" {
		t.Errorf("a VM that is not there: %v, %v", resp, err)
	}
}

func TestAggressiveBalloon(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	on := &pb.AggressiveBalloonRequest{Name: "vm", Enable: true}
	for range 2 {
		if resp, err := c.AggressiveBalloon(ctx, on); err != nil || !resp.Success {
			t.Fatalf("on: %v, %v", resp, err)
		}
	}
	// Its first step at once: 32 MiB.
	eventually(t, "the aggressive balloon inflates", func() bool { return e.Balloon(t, key).Target == 32*mib })
	off := &pb.AggressiveBalloonRequest{Name: "vm"}
	for range 2 {
		if resp, err := c.AggressiveBalloon(ctx, off); err != nil || !resp.Success {
			t.Fatalf("off: %v, %v", resp, err)
		}
	}
	if b := e.Balloon(t, key); b.Target != 0 {
		t.Errorf("balloon %d MiB after the aggressive balloon stopped, want 0", b.Target/mib)
	}

	// On again, then the VM dies: its aggressive balloon ends with it,
	// and a new VM of the name starts with none.
	if resp, err := c.AggressiveBalloon(ctx, on); err != nil || !resp.Success {
		t.Fatalf("on: %v, %v", resp, err)
	}
	killAndRestart(t, e, key)
	if b := e.Balloon(t, key); len(b.Targets) != 0 {
		t.Errorf("the new VM's balloon was moved: %v", b.Targets)
	}
}

// killAndRestart kills VM key's hypervisor and starts it anew.
func killAndRestart(t *testing.T, e *vmmtest.Env, key vmm.Key) {
	t.Helper()
	events, cancel := e.M.Subscribe()
	defer cancel()
	e.Kill(t, key)
	for ev := range events {
		if ev.Kind == vmm.EventStopped && ev.Info.Key == key {
			break
		}
	}
	e.Start(t, vmm.Spec{Key: key, MemoryMiB: 512})
}

func TestSetBalloonTimer(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	user := grpctest.AsUID(1000)
	if _, err := c.SetBalloonTimer(user, &pb.SetBalloonTimerRequest{TimerIntervalMillis: 1000}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a user: %v", err)
	}
	for _, ms := range []uint64{1, 99, 24*3600*1000 + 1, 1 << 63} {
		_, err := c.SetBalloonTimer(ctx, &pb.SetBalloonTimerRequest{TimerIntervalMillis: ms})
		wantInvalid(t, strconv.FormatUint(ms, 10)+" ms", err, "timer_interval_millis")
	}
	if e.M.BalloonTimer() != 0 {
		t.Errorf("a refused interval started the timer")
	}

	e.SetGuestMemory(t, key, 100*mib, 0)
	if resp, err := c.SetBalloonTimer(ctx, &pb.SetBalloonTimerRequest{TimerIntervalMillis: 100}); err != nil || !resp.Success {
		t.Fatalf("100 ms: %v, %v", resp, err)
	}
	// 412 MiB available, 64 reserved: the balloon settles at 348 MiB in
	// steps of 64.
	eventually(t, "the timer settles the balloon", func() bool { return e.Balloon(t, key).Size == 348*mib })
	// The guest needs 200 MiB more: the timer gives it back.
	e.SetGuestMemory(t, key, 300*mib, 0)
	eventually(t, "the timer deflates for a guest in need", func() bool { return e.Balloon(t, key).Size == 148*mib })

	// The VM dies under the timer; the timer goes on, and balances the
	// VM that takes its name.
	killAndRestart(t, e, key)
	eventually(t, "the timer balances the new VM", func() bool { return e.Balloon(t, key).Size > 0 })

	if resp, err := c.SetBalloonTimer(ctx, &pb.SetBalloonTimerRequest{}); err != nil || !resp.Success {
		t.Fatalf("off: %v, %v", resp, err)
	}
	if e.M.BalloonTimer() != 0 {
		t.Error("timer still on")
	}
	// Stopped: a round no longer comes (its goroutine has returned, as
	// SetBalloonTimer waits for it).
	n := len(e.Balloon(t, key).Targets)
	e.SetGuestMemory(t, key, 10*mib, 0)
	time.Sleep(300 * time.Millisecond)
	if m := len(e.Balloon(t, key).Targets); m != n {
		t.Errorf("%d targets set after the timer stopped", m-n)
	}
}

// A VM that is starting or stopping is refused at once, never waited
// for.
func TestMemoryCallsOnStartingAndStoppingVMs(t *testing.T) {
	e := vmmtest.New(t)
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{})) }, grpctest.UIDs()...)
	c := pb.NewVmConciergeClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	e.Unready.Store(true)
	if _, _, err := e.M.Start(ctx, vmm.Spec{Key: vmm.Key{Name: "starting"}, CPUs: 1, MemoryMiB: 512}); err != nil {
		t.Fatal(err)
	}
	e.Unready.Store(false)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "stopping"}, MemoryMiB: 512})
	e.ShutdownGate = make(chan struct{})
	stopped := make(chan error, 1)
	go func() { stopped <- e.M.Stop(context.Background(), vmm.Key{Name: "stopping"}) }()
	eventually(t, "the VM is stopping", func() bool {
		in, err := e.M.Get(vmm.Key{Name: "stopping"})
		return err == nil && in.State == vmm.StateStopping
	})

	for name, want := range map[string]string{"starting": "is starting", "stopping": "is stopping"} {
		if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: name}); err != nil || resp.Success {
			t.Errorf("%s: GetBalloonInfo %v, %v", name, resp, err)
		}
		calls := map[string]func() (*pb.SuccessFailureResponse, error){
			"AdjustVm": func() (*pb.SuccessFailureResponse, error) {
				return c.AdjustVm(ctx, &pb.AdjustVmRequest{Name: name, Operation: "balloon", Params: []string{"0"}})
			},
			"AggressiveBalloon": func() (*pb.SuccessFailureResponse, error) {
				return c.AggressiveBalloon(ctx, &pb.AggressiveBalloonRequest{Name: name, Enable: true})
			},
			"ReclaimVmMemory": func() (*pb.SuccessFailureResponse, error) {
				r, err := c.ReclaimVmMemory(ctx, &pb.ReclaimVmMemoryRequest{Name: name})
				return &pb.SuccessFailureResponse{Success: r.GetSuccess(), FailureReason: r.GetFailureReason()}, err
			},
		}
		for method, call := range calls {
			resp, err := call()
			if err != nil || resp.Success || !strings.Contains(resp.FailureReason, want) {
				t.Errorf("%s: %s = %v, %v; want success=false saying %q", name, method, resp, err, want)
			}
		}
	}
	close(e.ShutdownGate)
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v", err)
	}
}

// A suspended VM's guest cannot move its balloon: refused until resumed.
func TestMemoryCallsOnASuspendedVM(t *testing.T) {
	e, c, key := memoryEnv(t)
	ctx := context.Background()
	if err := e.M.Suspend(ctx, key); err != nil {
		t.Fatal(err)
	}
	resp, err := c.AdjustVm(ctx, &pb.AdjustVmRequest{Name: "vm", Operation: "balloon", Params: []string{"0"}})
	if err != nil || resp.Success || !strings.Contains(resp.FailureReason, "suspended") {
		t.Errorf("AdjustVm of a suspended VM: %v, %v", resp, err)
	}
	if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "vm"}); err != nil || resp.Success {
		t.Errorf("GetBalloonInfo of a suspended VM: %v, %v", resp, err)
	}
	if err := e.M.Resume(ctx, key); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.GetBalloonInfo(ctx, &pb.GetBalloonInfoRequest{Name: "vm"}); err != nil || !resp.Success {
		t.Errorf("GetBalloonInfo once resumed: %v, %v", resp, err)
	}
}

// A user acts on their own VMs only: another owner's is not there.
func TestMemoryCallsAreTheOwners(t *testing.T) {
	e := vmmtest.New(t)
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{})) }, grpctest.UIDs()...)
	c := pb.NewVmConciergeClient(cc)
	e.Start(t, vmm.Spec{Key: vmm.Key{Owner: "user-1000", Name: "vm"}, MemoryMiB: 512})
	resp, err := c.AdjustVm(grpctest.AsUID(1001), &pb.AdjustVmRequest{Name: "vm", Operation: "balloon", Params: []string{"0"}})
	if err != nil || resp.Success {
		t.Errorf("another user's VM: %v, %v", resp, err)
	}
	resp, err = c.AdjustVm(grpctest.AsUID(1000), &pb.AdjustVmRequest{Name: "vm", Operation: "balloon", Params: []string{strconv.Itoa(mib)}})
	if err != nil || !resp.Success {
		t.Errorf("the owner: %v, %v", resp, err)
	}
}
