package concierge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// The hot-plug calls over gRPC, on a running microvm VM and on none:
// refusals are gRPC errors of their category, naming what is wrong;
// ListUsbDevices of a VM with nothing attached is an empty success. (The
// calls that plug devices in are tested on real QEMU in
// integration/hotplug_test.go, and their QMP in internal/qemu.)
func TestHotplugRefusals(t *testing.T) {
	e := vmmtest.New(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "micro"}, CPUs: 1})
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{})) })
	c := pb.NewVmConciergeClient(cc)
	ctx := context.Background()
	code := func(what string, err error, want codes.Code, words ...string) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != want {
			t.Errorf("%s: %v, want %v", what, err, want)
			return
		}
		for _, w := range words {
			if !strings.Contains(st.Message(), w) {
				t.Errorf("%s: %q does not say %q", what, st.Message(), w)
			}
		}
	}

	_, err := c.AttachNetDevice(ctx, &pb.AttachNetDeviceRequest{VmName: "micro"})
	code("nic on a microvm", err, codes.FailedPrecondition, "microvm", "hot-plug")
	_, err = c.AttachNetDevice(ctx, &pb.AttachNetDeviceRequest{VmName: "micro", TapName: "a b"})
	code("bad tap name", err, codes.InvalidArgument, "tap_name")
	_, err = c.AttachNetDevice(ctx, &pb.AttachNetDeviceRequest{VmName: "nope"})
	code("unknown vm", err, codes.NotFound)
	_, err = c.AttachNetDevice(ctx, &pb.AttachNetDeviceRequest{VmName: "../x"})
	code("bad vm name", err, codes.InvalidArgument, "name")
	_, err = c.DetachNetDevice(ctx, &pb.DetachNetDeviceRequest{VmName: "micro", GuestBus: 256})
	code("bus past u8", err, codes.InvalidArgument, "guest_bus")
	_, err = c.DetachNetDevice(ctx, &pb.DetachNetDeviceRequest{VmName: "micro", GuestBus: 1})
	code("detach from a microvm", err, codes.FailedPrecondition, "microvm")

	_, err = c.AttachUsbDevice(ctx, &pb.AttachUsbDeviceRequest{VmName: "micro", BusNumber: 0, PortNumber: 1})
	code("bus 0", err, codes.InvalidArgument, "bus_number")
	_, err = c.AttachUsbDevice(ctx, &pb.AttachUsbDeviceRequest{VmName: "micro", BusNumber: 1, PortNumber: 0})
	code("port 0", err, codes.InvalidArgument, "port_number")
	_, err = c.AttachUsbDevice(ctx, &pb.AttachUsbDeviceRequest{VmName: "micro", BusNumber: 1, PortNumber: 1, VendorId: 1 << 16})
	code("vendor past u16", err, codes.InvalidArgument, "vendor_id")
	_, err = c.AttachUsbDevice(ctx, &pb.AttachUsbDeviceRequest{VmName: "micro", BusNumber: 255, PortNumber: 255})
	code("no such usb device", err, codes.NotFound, "port 255 of bus 255")
	_, err = c.DetachUsbDevice(ctx, &pb.DetachUsbDeviceRequest{VmName: "micro", GuestPort: 1000})
	code("port past u8", err, codes.InvalidArgument, "guest_port")

	list, err := c.ListUsbDevices(ctx, &pb.ListUsbDeviceRequest{VmName: "micro"})
	if err != nil || !list.GetSuccess() || len(list.GetUsbDevices()) != 0 {
		t.Errorf("ListUsbDevices: %v, %v", list, err)
	}
	_, err = c.ListUsbDevices(ctx, &pb.ListUsbDeviceRequest{VmName: "nope"})
	code("list of an unknown vm", err, codes.NotFound)
}

// What the hypervisor or the guest failed at is success=false with the
// reason; the request's own faults are gRPC errors.
func TestHotplugFailure(t *testing.T) {
	for _, c := range []struct {
		err    error
		code   codes.Code
		reason bool
	}{
		{errdefs.InvalidArgument("tap_name", "bad"), codes.InvalidArgument, false},
		{fmt.Errorf("vm x: %w", errdefs.ErrNotFound), codes.NotFound, false},
		{errdefs.Errorf(errdefs.ErrFailedPrecondition, "microvm"), codes.FailedPrecondition, false},
		{errdefs.Errorf(errdefs.ErrResourceExhausted, "no slot"), codes.ResourceExhausted, false},
		{errdefs.Errorf(errdefs.ErrPermissionDenied, "not yours"), codes.PermissionDenied, false},
		{errdefs.Errorf(errdefs.ErrAlreadyExists, "twice"), codes.AlreadyExists, false},
		{fmt.Errorf("hpnic0: %w (%w)", hypervisor.ErrNotDeleted, errdefs.Errorf(errdefs.ErrUnavailable, "deadline")), codes.OK, true},
		{errors.New("qmp: disconnected"), codes.OK, true},
	} {
		reason, err := hotplugFailure(c.err)
		if got := status.Code(err); got != c.code || (reason != "") != c.reason {
			t.Errorf("%v: reason %q, error %v; want code %v, reason %v", c.err, reason, err, c.code, c.reason)
		}
	}
	resp, err := successFailure(errors.New("the guest did not release the device"))
	if err != nil || resp.GetSuccess() || !strings.Contains(resp.GetFailureReason(), "did not release") {
		t.Errorf("successFailure: %v, %v", resp, err)
	}
}
