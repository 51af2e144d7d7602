package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// hotplugConcierge answers the hot-plug calls and keeps the requests.
type hotplugConcierge struct {
	concierge.UnimplementedVmConciergeServer
	mu   sync.Mutex
	reqs []proto.Message
}

func (h *hotplugConcierge) got(m proto.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs = append(h.reqs, m)
}

func (h *hotplugConcierge) requests() []proto.Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]proto.Message(nil), h.reqs...)
}

func (h *hotplugConcierge) AttachNetDevice(_ context.Context, req *concierge.AttachNetDeviceRequest) (*concierge.AttachNetDeviceResponse, error) {
	h.got(req)
	if req.GetVmName() == "micro" {
		return nil, status.Error(codes.FailedPrecondition, "vm micro runs on microvm, which has no PCI or USB hot-plug")
	}
	return &concierge.AttachNetDeviceResponse{Success: true, GuestBus: 3}, nil
}

func (h *hotplugConcierge) DetachNetDevice(_ context.Context, req *concierge.DetachNetDeviceRequest) (*concierge.SuccessFailureResponse, error) {
	h.got(req)
	return &concierge.SuccessFailureResponse{FailureReason: "the guest did not release the device"}, nil
}

func (h *hotplugConcierge) AttachUsbDevice(_ context.Context, req *concierge.AttachUsbDeviceRequest) (*concierge.AttachUsbDeviceResponse, error) {
	h.got(req)
	return &concierge.AttachUsbDeviceResponse{Success: true, GuestPort: 5}, nil
}

func (h *hotplugConcierge) DetachUsbDevice(_ context.Context, req *concierge.DetachUsbDeviceRequest) (*concierge.SuccessFailureResponse, error) {
	h.got(req)
	return &concierge.SuccessFailureResponse{Success: true}, nil
}

func (h *hotplugConcierge) ListUsbDevices(_ context.Context, req *concierge.ListUsbDeviceRequest) (*concierge.ListUsbDeviceResponse, error) {
	h.got(req)
	return &concierge.ListUsbDeviceResponse{Success: true, UsbDevices: []*concierge.UsbDeviceMessage{
		{GuestPort: 5, VendorId: 0x0781, ProductId: 0x5583, DeviceName: "Ultra Fit"}}}, nil
}

// hotplugVms answers cabin.v1's AttachUsbDevice into the same journal.
type hotplugVms struct {
	cabinv1.UnimplementedVmsServer
	h *hotplugConcierge
}

func (v *hotplugVms) AttachUsbDevice(_ context.Context, req *cabinv1.AttachUsbDeviceRequest) (*concierge.AttachUsbDeviceResponse, error) {
	v.h.got(req)
	return &concierge.AttachUsbDeviceResponse{Success: true, GuestPort: 6}, nil
}

func serveHotplug(t *testing.T) (*hotplugConcierge, string) {
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h := &hotplugConcierge{}
	s := grpc.NewServer()
	concierge.RegisterVmConciergeServer(s, h)
	cabinv1.RegisterVmsServer(s, &hotplugVms{h: h})
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return h, sock
}

func TestVMNetAndUSB(t *testing.T) {
	h, sock := serveHotplug(t)
	run := func(args ...string) result { return runCLI(t, nil, append([]string{"--socket", sock}, args...)...) }

	if r := run("--owner", "alice", "vm", "net", "attach", "dev", "--tap", "mytap"); r.code != 0 || r.stdout != "attached a nic to dev on guest pci bus 3\n" {
		t.Errorf("net attach: %+v", r)
	}
	if r := run("vm", "net", "attach", "dev", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"guest_bus": 3`) {
		t.Errorf("net attach --json: %+v", r)
	}
	if r := run("vm", "net", "attach", "micro"); r.code == 0 || !strings.Contains(r.stderr, "hot-plug") {
		t.Errorf("net attach on a microvm: %+v", r)
	}
	if r := run("vm", "net", "detach", "dev", "3"); r.code == 0 || !strings.Contains(r.stderr, "did not release") {
		t.Errorf("net detach that failed: %+v", r)
	}
	if r := run("vm", "usb", "attach", "dev", "1-2", "--id", "0781:5583"); r.code != 0 || r.stdout != "attached usb device 1-2 to dev on guest port 5\n" {
		t.Errorf("usb attach: %+v", r)
	}
	if r := run("vm", "usb", "attach", "dev", "/dev/bus/usb/001/004"); r.code != 0 || r.stdout != "attached usb device /dev/bus/usb/001/004 to dev on guest port 6\n" {
		t.Errorf("usb attach by path: %+v", r)
	}
	if r := run("vm", "usb", "detach", "dev", "5"); r.code != 0 || r.stdout != "detached the usb device on guest port 5 from dev\n" {
		t.Errorf("usb detach: %+v", r)
	}
	if r := run("vm", "usb", "list", "dev"); r.code != 0 || !strings.Contains(r.stdout, "5     0781:5583  Ultra Fit") {
		t.Errorf("usb list: %+v", r)
	}
	if r := run("vm", "usb", "list", "dev", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"vendor_id": 1921`) {
		t.Errorf("usb list --json: %+v", r)
	}
	want := []proto.Message{
		&concierge.AttachNetDeviceRequest{VmName: "dev", OwnerId: "alice", TapName: "mytap"},
		&concierge.AttachNetDeviceRequest{VmName: "dev"},
		&concierge.AttachNetDeviceRequest{VmName: "micro"},
		&concierge.DetachNetDeviceRequest{VmName: "dev", GuestBus: 3},
		&concierge.AttachUsbDeviceRequest{VmName: "dev", BusNumber: 1, PortNumber: 2, VendorId: 0x0781, ProductId: 0x5583},
		&cabinv1.AttachUsbDeviceRequest{VmName: "dev", DevicePath: "/dev/bus/usb/001/004"},
		&concierge.DetachUsbDeviceRequest{VmName: "dev", GuestPort: 5},
		&concierge.ListUsbDeviceRequest{VmName: "dev"},
		&concierge.ListUsbDeviceRequest{VmName: "dev"},
	}
	got := h.requests()
	if len(got) != len(want) {
		t.Fatalf("%d requests, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("request %d: %v, want %v", i, got[i], want[i])
		}
	}
}

// Usage errors are caught before cabind is asked.
func TestVMNetAndUSBUsage(t *testing.T) {
	h, sock := serveHotplug(t)
	for _, args := range [][]string{
		{"vm", "net", "attach"},
		{"vm", "net", "detach", "dev"},
		{"vm", "net", "detach", "dev", "x"},
		{"vm", "usb", "attach", "dev"},
		{"vm", "usb", "attach", "dev", "1:2"},
		{"vm", "usb", "attach", "dev", "a-b"},
		{"vm", "usb", "attach", "dev", "1-2", "--id", "xyz"},
		{"vm", "usb", "attach", "dev", "1-2", "--id", "12345:1"},
		{"vm", "usb", "attach", "dev", "/dev/bus/usb/001/004", "--id", "1:2"},
		{"vm", "usb", "detach", "dev", "-1"},
		{"vm", "usb", "list"},
	} {
		if r := runCLI(t, nil, append([]string{"--socket", sock}, args...)...); r.code != 2 {
			t.Errorf("%q: %+v, want a usage error (exit 2)", args, r)
		}
	}
	if got := h.requests(); len(got) != 0 {
		t.Errorf("usage errors reached cabind: %v", got)
	}
}

func TestVMStartHotplug(t *testing.T) {
	req, err := startRequest("dev", "", vmStartOptions{cpus: 1, accel: "auto", hotplug: true})
	if err != nil || !req.GetHotplug() {
		t.Errorf("--hotplug: %v, %v", req, err)
	}
	if req, err := startRequest("dev", "", vmStartOptions{cpus: 1, accel: "auto"}); err != nil || req.GetHotplug() {
		t.Errorf("no --hotplug: %v, %v", req, err)
	}
}
