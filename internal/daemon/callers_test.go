package daemon

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinpb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/relay"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// Uids of the test's callers.
const (
	alice = 1001
	bob   = 1002
	root  = 0
)

// agent is the one fake agent every fake VM's calls are relayed to.
type agent struct {
	vmtools.UnimplementedMaitredServer
}

func (agent) GetKernelVersion(context.Context, *vmtools.EmptyMessage) (*vmtools.GetKernelVersionResponse, error) {
	return &vmtools.GetKernelVersionResponse{KernelRelease: "guest"}, nil
}

// callers serves every API cabind serves, registered as Run registers
// them, with the relay, over fake VMs, and returns a client and the VMs'
// manager.
func callers(t *testing.T) (*grpc.ClientConn, *vmmtest.Env) {
	t.Helper()
	e := vmmtest.New(t)
	e.Agent = grpctest.Serve(t, func(s *grpc.Server) { vmtools.RegisterMaitredServer(s, agent{}) })
	opts := append(grpctest.UIDs(), relayTo(e.M, newReadAhead(e.Root)).ServerOptions()...)
	disks, err := diskimage.New(diskimage.Options{Root: e.Root})
	if err != nil {
		t.Fatal(err)
	}
	cc := grpctest.Serve(t, func(s *grpc.Server) { register(s, services{m: e.M, disks: disks}) }, opts...)
	return cc, e
}

// as is a context for calls by uid, with more metadata.
var as = grpctest.AsUID

func wantDenied(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("%s: %v, want PERMISSION_DENIED", what, err)
	}
}

// Two users and root on one cabind: neither user sees or touches the
// other's VMs, through any API, the relay or the events; root sees and may
// act on all.
func TestCallersKeptApart(t *testing.T) {
	cc, e := callers(t)
	c := conciergepb.NewVmConciergeClient(cc)
	v := cabinpb.NewVmsClient(cc)
	start := func(uid int, name string) {
		t.Helper()
		resp, err := c.StartVm(as(uid), &conciergepb.StartVmRequest{Name: name, Cpus: 1})
		if err != nil || !resp.GetSuccess() {
			t.Fatalf("uid %d starts %s: %v, %v", uid, name, resp, err)
		}
	}
	// Each watches the events from the start.
	watch := func(uid int, owner string) (<-chan *cabinpb.Event, <-chan error) {
		ctx, cancel := context.WithCancel(as(uid))
		t.Cleanup(cancel)
		s, err := cabinpb.NewEventsClient(cc).Watch(ctx, &cabinpb.WatchRequest{OwnerId: owner})
		if err != nil {
			t.Fatal(err)
		}
		out, errc := make(chan *cabinpb.Event, 64), make(chan error, 1)
		go func() {
			for {
				ev, err := s.Recv()
				if err != nil {
					errc <- err
					close(out)
					return
				}
				out <- ev
			}
		}()
		if _, err := s.Header(); err != nil {
			t.Fatal(err)
		}
		return out, errc
	}
	aliceEvents, _ := watch(alice, "")
	rootEvents, _ := watch(root, "")
	_, spyErr := watch(alice, caller.UserOwner(bob))
	if err := <-spyErr; status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice watching bob's events: %v, want PERMISSION_DENIED", err)
	}

	start(alice, "a1")
	start(bob, "b1")
	start(root, "r1")
	e.Start(t, vmm.Spec{Key: vmm.Key{Owner: caller.UserOwner(bob), Name: "b2"}})

	// Each user's VMs are its own owner's.
	list := func(uid int, owner string) []string {
		t.Helper()
		resp, err := c.ListVms(as(uid), &conciergepb.ListVmsRequest{OwnerId: owner})
		if err != nil {
			t.Fatalf("uid %d lists %q: %v", uid, owner, err)
		}
		var names []string
		for _, vm := range resp.GetVms() {
			names = append(names, vm.GetOwnerId()+"/"+vm.GetName())
		}
		return names
	}
	if got := list(alice, ""); len(got) != 1 || got[0] != "user-1001/a1" {
		t.Errorf("alice lists %q, want her a1 alone", got)
	}
	if got := list(bob, caller.UserOwner(bob)); len(got) != 2 {
		t.Errorf("bob lists %q, want his two", got)
	}
	if got := list(root, caller.UserOwner(alice)); len(got) != 1 {
		t.Errorf("root lists alice's %q, want a1", got)
	}
	if got := list(root, ""); len(got) != 1 || got[0] != "/r1" {
		t.Errorf("root lists %q, want its own r1", got)
	}
	_, err := c.ListVms(as(alice), &conciergepb.ListVmsRequest{OwnerId: caller.UserOwner(bob)})
	wantDenied(t, "alice lists bob's", err)

	// Naming bob's VMs, alice is refused; naming them without an owner,
	// she finds none of hers.
	bobs := caller.UserOwner(bob)
	_, err = c.GetVmInfo(as(alice), &conciergepb.GetVmInfoRequest{OwnerId: bobs, Name: "b1"})
	wantDenied(t, "alice's GetVmInfo of b1", err)
	if info, err := c.GetVmInfo(as(alice), &conciergepb.GetVmInfoRequest{Name: "b1"}); err != nil || info.GetSuccess() {
		t.Errorf("alice's GetVmInfo of b1 in her own: %v, %v; want not found", info, err)
	}
	_, err = c.StopVm(as(alice), &conciergepb.StopVmRequest{OwnerId: bobs, Name: "b1"})
	wantDenied(t, "alice stops b1", err)
	_, err = c.GetVmLogs(as(alice), &conciergepb.GetVmLogsRequest{OwnerId: bobs, Name: "b1"})
	wantDenied(t, "alice reads b1's logs", err)
	_, err = c.StartVm(as(alice), &conciergepb.StartVmRequest{OwnerId: bobs, Name: "b3", Cpus: 1})
	wantDenied(t, "alice starts a VM as bob", err)
	_, err = v.StartVm(as(alice), &cabinpb.StartVmRequest{Request: &conciergepb.StartVmRequest{OwnerId: bobs, Name: "b3", Cpus: 1}})
	wantDenied(t, "alice starts a VM as bob through cabin.v1", err)
	_, err = v.GetVm(as(alice), &cabinpb.GetVmRequest{OwnerId: bobs, Name: "b1"})
	wantDenied(t, "alice's cabin.v1 GetVm of b1", err)
	_, err = v.ListVms(as(alice), &cabinpb.ListVmsRequest{OwnerId: bobs})
	wantDenied(t, "alice's cabin.v1 ListVms of bob's", err)
	if mine, err := v.ListVms(as(alice), &cabinpb.ListVmsRequest{}); err != nil || len(mine.GetVms()) != 1 || mine.GetVms()[0].GetName() != "a1" {
		t.Errorf("alice's cabin.v1 ListVms: %v, %v; want her a1 alone", mine, err)
	}
	if _, err := v.GetVm(as(alice), &cabinpb.GetVmRequest{Name: "b1"}); status.Code(err) != codes.NotFound {
		t.Errorf("alice's cabin.v1 GetVm of b1 in her own: %v, want NOT_FOUND", err)
	}
	logs, err := v.Logs(as(alice), &cabinpb.LogsRequest{OwnerId: bobs, Name: "b1"})
	if err == nil {
		_, err = logs.Recv()
	}
	wantDenied(t, "alice streams b1's logs", err)
	_, err = cabinpb.NewImagesClient(cc).Build(as(alice), &cabinpb.BuildImageRequest{Force: true})
	if err == nil {
		var s grpc.ServerStreamingClient[cabinpb.BuildImageProgress]
		s, err = cabinpb.NewImagesClient(cc).Build(as(alice), &cabinpb.BuildImageRequest{Force: true})
		if err == nil {
			_, err = s.Recv()
		}
	}
	wantDenied(t, "alice rebuilds the image", err)

	// The relay: her own VM answers, bob's cannot be named.
	kv := func(uid int, kv ...string) context.Context {
		return as(uid, append([]string{relay.MetadataVM}, kv...)...)
	}
	m := vmtools.NewMaitredClient(cc)
	if _, err := m.GetKernelVersion(kv(alice, "a1"), &vmtools.EmptyMessage{}); err != nil {
		t.Errorf("alice's call to a1: %v", err)
	}
	_, err = m.GetKernelVersion(kv(alice, "b1", relay.MetadataOwner, bobs), &vmtools.EmptyMessage{})
	wantDenied(t, "alice's call to b1", err)
	if _, err := m.GetKernelVersion(kv(alice, "b1"), &vmtools.EmptyMessage{}); status.Code(err) != codes.NotFound {
		t.Errorf("alice's call to b1 in her own: %v, want NOT_FOUND", err)
	}
	if _, err := m.GetKernelVersion(kv(root, "b1", relay.MetadataOwner, bobs), &vmtools.EmptyMessage{}); err != nil {
		t.Errorf("root's call to b1: %v", err)
	}

	// StopAllVms by a user stops that user's VMs only.
	if _, err := c.StopAllVms(as(bob), nil); err != nil {
		t.Fatal(err)
	}
	if got := list(bob, ""); len(got) != 0 {
		t.Errorf("bob's VMs after his StopAllVms: %q", got)
	}
	if got := list(alice, ""); len(got) != 1 {
		t.Errorf("alice's VMs after bob's StopAllVms: %q, want hers still", got)
	}
	if got := list(root, ""); len(got) != 1 {
		t.Errorf("root's VMs after bob's StopAllVms: %q, want its own still", got)
	}

	// Alice saw her VM's events only; root saw everyone's.
	time.Sleep(100 * time.Millisecond)
	for _, ev := range drain(aliceEvents) {
		if owner := eventOwner(ev); owner != caller.UserOwner(alice) {
			t.Errorf("alice saw an event of %q: %v", owner, ev)
		}
	}
	owners := map[string]bool{}
	for _, ev := range drain(rootEvents) {
		owners[eventOwner(ev)] = true
	}
	if !owners[caller.UserOwner(alice)] || !owners[bobs] || !owners[""] {
		t.Errorf("root saw events of %v, want every owner's", owners)
	}
}

func drain(ch <-chan *cabinpb.Event) []*cabinpb.Event {
	var out []*cabinpb.Event
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return out
			}
			out = append(out, ev)
		default:
			return out
		}
	}
}

func eventOwner(ev *cabinpb.Event) string {
	switch {
	case ev.GetVmStartingUp() != nil:
		return ev.GetVmStartingUp().GetOwnerId()
	case ev.GetVmStarted() != nil:
		return ev.GetVmStarted().GetOwnerId()
	case ev.GetVmStopping() != nil:
		return ev.GetVmStopping().GetOwnerId()
	case ev.GetVmStopped() != nil:
		return ev.GetVmStopped().GetOwnerId()
	}
	return "?"
}
