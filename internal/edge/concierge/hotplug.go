package concierge

import (
	"context"
	"errors"
	"fmt"
	"math"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/vmm"
)

// The hot-plug calls. A request that cannot be honoured as it stands (bad
// input, no such VM or device, a VM without hot-plug or not running, no
// free slot, a device the caller may not use) is a gRPC error of its
// category; a device the hypervisor or the guest failed to plug in or
// let go of is success=false with the reason, as upstream reports it.

// hotplugFailure splits err as above: a reason for the response, or the
// gRPC error to return.
func hotplugFailure(err error) (string, error) {
	for _, kind := range []error{
		errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrPermissionDenied,
		errdefs.ErrFailedPrecondition, errdefs.ErrAlreadyExists, errdefs.ErrResourceExhausted,
	} {
		if errors.Is(err, kind) {
			return "", errgrpc.ToGRPC(err)
		}
	}
	if errors.Is(err, context.Canceled) {
		return "", errgrpc.ToGRPC(err)
	}
	return err.Error(), nil
}

// AttachNetDevice plugs a virtio-net NIC into a VM started with
// hot-plug. An empty tap_name has cabind make the NIC a tap of its own;
// a named tap must exist and be the caller's (root may name any tap
// that is not one of cabind's VMs'). guest_bus is the NIC's PCI bus in
// the guest.
func (s *Server) AttachNetDevice(ctx context.Context, req *pb.AttachNetDeviceRequest) (*pb.AttachNetDeviceResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	dev, err := s.m.AttachNIC(ctx, key, req.GetTapName(), caller.FromContext(ctx))
	if err != nil {
		reason, gerr := hotplugFailure(err)
		if gerr != nil {
			return nil, gerr
		}
		return &pb.AttachNetDeviceResponse{FailureReason: reason}, nil
	}
	return &pb.AttachNetDeviceResponse{Success: true, GuestBus: uint32(dev.Bus)}, nil
}

// DetachNetDevice unplugs the NIC on guest_bus, once the guest has let
// it go, and removes its tap if cabind made it.
func (s *Server) DetachNetDevice(ctx context.Context, req *pb.DetachNetDeviceRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	bus, err := uint8Field("guest_bus", req.GetGuestBus())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return successFailure(s.m.DetachNIC(ctx, key, bus))
}

// AttachUsbDevice passes a host USB device to a VM started with
// hot-plug. Upstream's caller hands concierge an open file of the
// device, which gRPC cannot carry: cabind finds the device its request
// names by bus_number and port_number (the host's USB topology, sysfs
// device BUS-PORT), checks vendor_id and product_id against it when they
// are set, and opens its node under /dev/bus/usb on the caller's behalf,
// so the caller must be allowed to read and write it itself.
func (s *Server) AttachUsbDevice(ctx context.Context, req *pb.AttachUsbDeviceRequest) (*pb.AttachUsbDeviceResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	bus, err := uint8Field("bus_number", req.GetBusNumber())
	if err == nil && bus == 0 {
		err = errdefs.InvalidArgument("bus_number", "must be set: USB buses count from 1")
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	port, err := uint8Field("port_number", req.GetPortNumber())
	if err == nil && port == 0 {
		err = errdefs.InvalidArgument("port_number", "must be set: USB ports count from 1")
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	for _, f := range []struct {
		name string
		v    uint32
	}{{"vendor_id", req.GetVendorId()}, {"product_id", req.GetProductId()}} {
		if f.v > math.MaxUint16 {
			return nil, errgrpc.ToGRPC(errdefs.InvalidArgument(f.name, fmt.Sprintf("%d does not fit in 16 bits", f.v)))
		}
	}
	path, err := vmm.FindUSB(bus, port, uint16(req.GetVendorId()), uint16(req.GetProductId()))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return AttachUSBResponse(s.m.AttachUSB(ctx, key, path, caller.FromContext(ctx)))
}

// AttachUSBResponse is upstream's answer to an attach of a USB device
// (vmm.Manager.AttachUSB) that gave dev or err, for both APIs.
func AttachUSBResponse(dev vmm.USBDevice, err error) (*pb.AttachUsbDeviceResponse, error) {
	if err != nil {
		reason, gerr := hotplugFailure(err)
		if gerr != nil {
			return nil, gerr
		}
		return &pb.AttachUsbDeviceResponse{Reason: reason}, nil
	}
	return &pb.AttachUsbDeviceResponse{Success: true, GuestPort: uint32(dev.Port)}, nil
}

// DetachUsbDevice takes the USB device on guest_port away from the VM.
func (s *Server) DetachUsbDevice(ctx context.Context, req *pb.DetachUsbDeviceRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	port, err := uint8Field("guest_port", req.GetGuestPort())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return successFailure(s.m.DetachUSB(ctx, key, port))
}

// ListUsbDevices lists the USB devices attached to a VM: none for a VM
// without hot-plug.
func (s *Server) ListUsbDevices(ctx context.Context, req *pb.ListUsbDeviceRequest) (*pb.ListUsbDeviceResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	devs, err := s.m.USBDevices(ctx, key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &pb.ListUsbDeviceResponse{Success: true}
	for _, d := range devs {
		resp.UsbDevices = append(resp.UsbDevices, &pb.UsbDeviceMessage{
			GuestPort: uint32(d.Port), VendorId: uint32(d.VendorID), ProductId: uint32(d.ProductID), DeviceName: d.Name,
		})
	}
	return resp, nil
}

// uint8Field is a request's field that upstream says fits in a uint8_t.
func uint8Field(name string, v uint32) (int, error) {
	if v > math.MaxUint8 {
		return 0, errdefs.InvalidArgument(name, fmt.Sprintf("%d does not fit in 8 bits", v))
	}
	return int(v), nil
}

func successFailure(err error) (*pb.SuccessFailureResponse, error) {
	if err == nil {
		return &pb.SuccessFailureResponse{Success: true}, nil
	}
	reason, gerr := hotplugFailure(err)
	if gerr != nil {
		return nil, gerr
	}
	return &pb.SuccessFailureResponse{FailureReason: reason}, nil
}
