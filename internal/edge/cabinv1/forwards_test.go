package cabinv1

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/forward"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// forwardsEnv serves cabin.v1.Forwards over fake VMs that hold forwards,
// whose guest ports all echo; callers are chosen per call (grpctest.AsUID).
func forwardsEnv(t *testing.T) (pb.ForwardsClient, *vmmtest.Env) {
	t.Helper()
	kind := &forward.Resource{}
	e := vmmtest.New(t, kind)
	kind.Dial = e.M.DialPort
	e.DialPort = func(context.Context, vmm.Key, string, int) (net.Conn, error) {
		host, guest := net.Pipe()
		go func() {
			defer guest.Close()
			io.Copy(guest, guest)
		}()
		return host, nil
	}
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterForwardsServer(s, NewForwards(e.M)) }, grpctest.UIDs()...)
	return pb.NewForwardsClient(cc), e
}

// freeTCPPort is a port nothing listens on at 127.0.0.1 now.
func freeTCPPort(t *testing.T) uint32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func wantStatus(t *testing.T, what string, err error, code codes.Code, words ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Errorf("%s: %v, want %v", what, err, code)
		return
	}
	for _, w := range words {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("%s: %q does not say %q", what, st.Message(), w)
		}
	}
}

func TestForwardsAddListRemove(t *testing.T) {
	c, e := forwardsEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "web"}})
	ctx := grpctest.AsUID(0)
	port := freeTCPPort(t)
	got, err := c.AddForward(ctx, &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: port, GuestPort: 80}})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetHostAddress() != "127.0.0.1" || got.GetProtocol() != pb.Protocol_PROTOCOL_TCP || got.GetHostPort() != port || got.GetGuestPort() != 80 {
		t.Errorf("added %v: want the defaults filled in", got)
	}
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Errorf("through the forward: %q, %v", buf, err)
	}

	list, err := c.ListForwards(ctx, &pb.ListForwardsRequest{VmName: "web"})
	if err != nil || len(list.GetForwards()) != 1 || list.GetForwards()[0].GetHostPort() != port {
		t.Errorf("list: %v, %v", list, err)
	}
	rm, err := c.RemoveForward(ctx, &pb.RemoveForwardRequest{VmName: "web", HostPort: port})
	if err != nil || rm.GetForward().GetGuestPort() != 80 {
		t.Errorf("remove: %v, %v", rm, err)
	}
	_, err = c.RemoveForward(ctx, &pb.RemoveForwardRequest{VmName: "web", HostPort: port})
	wantStatus(t, "remove again", err, codes.NotFound, fmt.Sprint(port))
	if list, err := c.ListForwards(ctx, &pb.ListForwardsRequest{VmName: "web"}); err != nil || len(list.GetForwards()) != 0 {
		t.Errorf("list after remove: %v, %v", list, err)
	}
}

// The bad inputs of issue 13, each with its code and the field or port
// it is about.
func TestForwardsBadInput(t *testing.T) {
	c, e := forwardsEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "web"}})
	ctx := grpctest.AsUID(0)
	port := freeTCPPort(t)
	if _, err := c.AddForward(ctx, &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: port, GuestPort: 80}}); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := uint32(taken.Addr().(*net.TCPAddr).Port)
	for _, tc := range []struct {
		name  string
		req   *pb.AddForwardRequest
		code  codes.Code
		words []string
	}{
		{"host port 0", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: 0, GuestPort: 80}}, codes.InvalidArgument, []string{"host_port"}},
		{"host port 65536", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: 65536, GuestPort: 80}}, codes.InvalidArgument, []string{"host_port", "65536"}},
		{"guest port 0", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: 9000, GuestPort: 0}}, codes.InvalidArgument, []string{"guest_port"}},
		{"guest port 65536", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: 9000, GuestPort: 65536}}, codes.InvalidArgument, []string{"guest_port", "65536"}},
		{"no forward", &pb.AddForwardRequest{VmName: "web"}, codes.InvalidArgument, []string{"forward"}},
		{"not an address", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostAddress: "localhost", HostPort: 9000, GuestPort: 80}}, codes.InvalidArgument, []string{"host_address", "localhost"}},
		{"unknown protocol", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{Protocol: 7, HostPort: 9000, GuestPort: 80}}, codes.InvalidArgument, []string{"protocol"}},
		{"no such vm", &pb.AddForwardRequest{VmName: "ghost", Forward: &pb.Forward{HostPort: 9000, GuestPort: 80}}, codes.NotFound, []string{"ghost"}},
		{"bad vm name", &pb.AddForwardRequest{VmName: "a/b", Forward: &pb.Forward{HostPort: 9000, GuestPort: 80}}, codes.InvalidArgument, nil},
		{"twice", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: port, GuestPort: 80}}, codes.AlreadyExists, []string{fmt.Sprint(port)}},
		{"port in use", &pb.AddForwardRequest{VmName: "web", Forward: &pb.Forward{HostPort: takenPort, GuestPort: 80}}, codes.FailedPrecondition, []string{fmt.Sprint(takenPort), "in use"}},
	} {
		_, err := c.AddForward(ctx, tc.req)
		wantStatus(t, tc.name, err, tc.code, tc.words...)
	}
	_, err = c.RemoveForward(ctx, &pb.RemoveForwardRequest{VmName: "web", HostPort: port + 1})
	wantStatus(t, "remove one that is not there", err, codes.NotFound)
	_, err = c.RemoveForward(ctx, &pb.RemoveForwardRequest{VmName: "ghost", HostPort: port})
	wantStatus(t, "remove from no vm", err, codes.NotFound, "ghost")
	_, err = c.ListForwards(ctx, &pb.ListForwardsRequest{VmName: "ghost"})
	wantStatus(t, "list of no vm", err, codes.NotFound, "ghost")
}

// A user forwards ports of its own VMs only, and never a privileged one;
// root forwards any owner's.
func TestForwardsOwnerRule(t *testing.T) {
	c, e := forwardsEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Owner: "user-1000", Name: "mine"}})
	alice, bob := grpctest.AsUID(1000), grpctest.AsUID(2000)
	port := freeTCPPort(t)
	if _, err := c.AddForward(alice, &pb.AddForwardRequest{VmName: "mine", Forward: &pb.Forward{HostPort: port, GuestPort: 80}}); err != nil {
		t.Fatalf("a user forwarding its own VM's port: %v", err)
	}
	_, err := c.AddForward(alice, &pb.AddForwardRequest{VmName: "mine", Forward: &pb.Forward{HostPort: 80, GuestPort: 80}})
	wantStatus(t, "a user taking a privileged port", err, codes.PermissionDenied, "80", "1024")
	_, err = c.AddForward(bob, &pb.AddForwardRequest{OwnerId: "user-1000", VmName: "mine", Forward: &pb.Forward{HostPort: port + 1, GuestPort: 80}})
	wantStatus(t, "another user naming its owner", err, codes.PermissionDenied, "user-1000")
	_, err = c.AddForward(bob, &pb.AddForwardRequest{VmName: "mine", Forward: &pb.Forward{HostPort: port + 1, GuestPort: 80}})
	wantStatus(t, "another user naming the VM", err, codes.NotFound)
	_, err = c.ListForwards(bob, &pb.ListForwardsRequest{OwnerId: "user-1000", VmName: "mine"})
	wantStatus(t, "another user listing", err, codes.PermissionDenied)
	_, err = c.RemoveForward(bob, &pb.RemoveForwardRequest{OwnerId: "user-1000", VmName: "mine", HostPort: port})
	wantStatus(t, "another user removing", err, codes.PermissionDenied)
	list, err := c.ListForwards(grpctest.AsUID(0), &pb.ListForwardsRequest{OwnerId: "user-1000", VmName: "mine"})
	if err != nil || len(list.GetForwards()) != 1 {
		t.Errorf("root listing a user's forwards: %v, %v", list, err)
	}
	if _, err := c.RemoveForward(alice, &pb.RemoveForwardRequest{VmName: "mine", HostPort: port}); err != nil {
		t.Errorf("a user removing its own forward: %v", err)
	}
}

// A VM's forwards end with it.
func TestForwardsEndWithTheVM(t *testing.T) {
	c, e := forwardsEnv(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "brief"}})
	ctx := grpctest.AsUID(0)
	port := freeTCPPort(t)
	if _, err := c.AddForward(ctx, &pb.AddForwardRequest{VmName: "brief", Forward: &pb.Forward{HostPort: port, GuestPort: 80}}); err != nil {
		t.Fatal(err)
	}
	if err := e.M.Stop(context.Background(), vmm.Key{Name: "brief"}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("the port of a stopped VM's forward: %v", err)
	}
	ln.Close()
	_, err = c.ListForwards(ctx, &pb.ListForwardsRequest{VmName: "brief"})
	wantStatus(t, "list of a stopped VM", err, codes.NotFound)
}
