package cabinv1

import (
	"context"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/vmm"
)

// AttachUsbDevice passes the host's USB device at device_path to a VM
// started with hot-plug, as VmConcierge.AttachUsbDevice does the device
// its bus and port name.
func (s *Vms) AttachUsbDevice(ctx context.Context, req *pb.AttachUsbDeviceRequest) (*conciergepb.AttachUsbDeviceResponse, error) {
	c := caller.FromContext(ctx)
	owner, err := c.Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	key := vmm.Key{Owner: owner, Name: req.GetVmName()}
	if err := key.Validate(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return concierge.AttachUSBResponse(s.m.AttachUSB(ctx, key, req.GetDevicePath(), c))
}
