package main

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// added answers AddForward as cabind does: the forward with its address
// filled in.
func added(req *cabinv1.AddForwardRequest) (*cabinv1.Forward, error) {
	f := proto.Clone(req.GetForward()).(*cabinv1.Forward)
	if f.HostAddress == "" {
		f.HostAddress = "127.0.0.1"
	}
	return f, nil
}

func TestVMForwardAdd(t *testing.T) {
	d := startDaemon(t)
	var got []*cabinv1.AddForwardRequest
	d.forwards.add = func(req *cabinv1.AddForwardRequest) (*cabinv1.Forward, error) {
		got = append(got, req)
		if req.GetForward().GetHostPort() == 0 {
			return nil, status.Error(codes.InvalidArgument, "host_port: 0 is not a port: must be 1 to 65535")
		}
		return added(req)
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "forward", "web", "8080:80")
	if r.code != 0 || r.stdout != "forwarding tcp 127.0.0.1:8080 to port 80 of web\n" {
		t.Errorf("got %+v", r)
	}
	want := &cabinv1.AddForwardRequest{OwnerId: "alice", VmName: "web",
		Forward: &cabinv1.Forward{Protocol: cabinv1.Protocol_PROTOCOL_TCP, HostPort: 8080, GuestPort: 80}}
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("requests %v, want %v", got, want)
	}

	for _, args := range [][]string{
		{"vm", "forward", "dns", "5353:53", "--udp", "--address", "::1"},
		{"vm", "forward", "dns", "5353:53/udp", "--address", "::1"},
		{"vm", "forward", "dns", "5353:53/udp", "--udp", "--address", "::1"},
	} {
		got = nil
		r = d.run(t, nil, args...)
		if r.code != 0 || r.stdout != "forwarding udp [::1]:5353 to port 53 of dns\n" {
			t.Errorf("%q: %+v", args, r)
		}
		want := &cabinv1.AddForwardRequest{VmName: "dns",
			Forward: &cabinv1.Forward{Protocol: cabinv1.Protocol_PROTOCOL_UDP, HostAddress: "::1", HostPort: 5353, GuestPort: 53}}
		if len(got) != 1 || !proto.Equal(got[0], want) {
			t.Errorf("%q: requests %v, want %v", args, got, want)
		}
	}

	// Ports out of range are the daemon's to refuse, naming the field.
	r = d.run(t, nil, "vm", "forward", "web", "0:80")
	if r.code != 1 || r.stderr != "cabin: forward 0:80 to web: host_port: 0 is not a port: must be 1 to 65535\n" {
		t.Errorf("port 0: %+v", r)
	}
}

func TestVMForwardUsage(t *testing.T) {
	d := startDaemon(t)
	called := false
	d.forwards.add = func(req *cabinv1.AddForwardRequest) (*cabinv1.Forward, error) {
		called = true
		return added(req)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"vm", "forward"}, "needs a VM name"},
		{[]string{"vm", "forward", "web"}, "HOSTPORT:GUESTPORT"},
		{[]string{"vm", "forward", "web", "8080"}, `"8080" is not HOSTPORT:GUESTPORT`},
		{[]string{"vm", "forward", "web", "http:80"}, `host port "http"`},
		{[]string{"vm", "forward", "web", "8080:-1"}, `guest port "-1"`},
		{[]string{"vm", "forward", "web", "8080:80/sctp"}, `"sctp"`},
		{[]string{"vm", "forward", "web", "8080:80/tcp", "--udp"}, "--udp"},
		{[]string{"vm", "forward", "web", "8080:80", "9090:90"}, "takes"},
		{[]string{"vm", "forward", "web", "--list", "8080:80"}, "takes no"},
		{[]string{"vm", "forward", "web", "--list", "--rm", "8080"}, "alone"},
		{[]string{"vm", "forward", "web", "8080:80", "--json"}, "--json goes with --list"},
	} {
		r := d.run(t, nil, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.says) {
			t.Errorf("%q: %+v; want a usage error saying %q", c.args, r, c.says)
		}
	}
	if called {
		t.Error("a usage error reached the daemon")
	}
}

func TestVMForwardList(t *testing.T) {
	d := startDaemon(t)
	var gotReq *cabinv1.ListForwardsRequest
	d.forwards.list = func(req *cabinv1.ListForwardsRequest) (*cabinv1.ListForwardsResponse, error) {
		gotReq = req
		if req.GetVmName() == "ghost" {
			return nil, status.Error(codes.NotFound, "vm ghost: not found")
		}
		return &cabinv1.ListForwardsResponse{Forwards: []*cabinv1.Forward{
			{HostAddress: "127.0.0.1", HostPort: 8080, GuestPort: 80},
			{Protocol: cabinv1.Protocol_PROTOCOL_UDP, HostAddress: "0.0.0.0", HostPort: 5353, GuestPort: 53,
				Problem: "host port 5353 is in use (udp)"},
		}}, nil
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "forward", "web", "--list")
	want := "PROTOCOL  HOST            GUEST PORT\n" +
		"tcp       127.0.0.1:8080  80\n" +
		"udp       0.0.0.0:5353    53\n" +
		"udp 0.0.0.0:5353 is not forwarded: host port 5353 is in use (udp)\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("got %+v\nwant stdout:\n%s", r, want)
	}
	if gotReq.GetOwnerId() != "alice" || gotReq.GetVmName() != "web" {
		t.Errorf("request %v", gotReq)
	}
	r = d.run(t, nil, "vm", "forward", "web", "--list", "--json")
	var fwds []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &fwds); err != nil || r.code != 0 || len(fwds) != 2 ||
		fwds[0]["protocol"] != "PROTOCOL_TCP" || fwds[1]["host_port"] != float64(5353) {
		t.Errorf("--json: %+v (%v)", r, err)
	}
	r = d.run(t, nil, "vm", "forward", "ghost", "--list")
	if r.code != 1 || r.stderr != "cabin: list the forwards of ghost: vm ghost: not found\n" {
		t.Errorf("no such VM: %+v", r)
	}
}

func TestVMForwardRemove(t *testing.T) {
	d := startDaemon(t)
	var got *cabinv1.RemoveForwardRequest
	d.forwards.remove = func(req *cabinv1.RemoveForwardRequest) (*cabinv1.RemoveForwardResponse, error) {
		got = req
		if req.GetHostPort() == 9999 {
			return nil, status.Error(codes.NotFound, "vm web has no forward of tcp port 9999")
		}
		return &cabinv1.RemoveForwardResponse{Forward: &cabinv1.Forward{
			Protocol: req.GetProtocol(), HostAddress: "127.0.0.1", HostPort: req.GetHostPort(), GuestPort: 53}}, nil
	}
	r := d.run(t, nil, "vm", "forward", "dns", "--rm", "5353/udp")
	if r.code != 0 || r.stdout != "removed udp 127.0.0.1:5353 to port 53 of dns\n" {
		t.Errorf("got %+v", r)
	}
	want := &cabinv1.RemoveForwardRequest{VmName: "dns", Protocol: cabinv1.Protocol_PROTOCOL_UDP, HostPort: 5353}
	if !proto.Equal(got, want) {
		t.Errorf("request %v, want %v", got, want)
	}
	r = d.run(t, nil, "vm", "forward", "web", "--rm", "8080", "--address", "0.0.0.0")
	want = &cabinv1.RemoveForwardRequest{VmName: "web", HostAddress: "0.0.0.0", HostPort: 8080}
	if r.code != 0 || !proto.Equal(got, want) {
		t.Errorf("%+v: request %v, want %v", r, got, want)
	}
	r = d.run(t, nil, "vm", "forward", "web", "--rm", "9999")
	if r.code != 1 || r.stderr != "cabin: remove the forward of 9999 from web: vm web has no forward of tcp port 9999\n" {
		t.Errorf("not there: %+v", r)
	}
}
