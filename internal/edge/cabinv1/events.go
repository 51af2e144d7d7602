// Package cabinv1 is cabind's edge for cabin's own API, cabin.v1: Vms
// (StartVm with cabin's extensions to concierge's request), Events
// (concierge's D-Bus signals as one stream) and Images (the guest image
// build). Like every edge it only converts messages and errors.
package cabinv1

import (
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Events serves cabin.v1.Events: the concierge D-Bus signals as a
// stream.
type Events struct {
	pb.UnimplementedEventsServer
	m     *vmm.Manager
	disks *diskimage.Store
}

// NewEvents returns the Events edge over m, with the progress of disks'
// operations (concierge's DiskImageProgress) when disks is not nil.
func NewEvents(m *vmm.Manager, disks *diskimage.Store) *Events {
	return &Events{m: m, disks: disks}
}

func (s *Events) Watch(req *pb.WatchRequest, stream grpc.ServerStreamingServer[pb.Event]) error {
	// Root watches every owner's VMs unless it names one; any other
	// caller watches its own, whether it names them or not.
	c := caller.FromContext(stream.Context())
	owner, err := c.Owner(req.GetOwnerId())
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	events, cancel := s.m.Subscribe()
	defer cancel()
	var progress <-chan diskimage.Progress
	if s.disks != nil {
		var unsubscribe func()
		progress, unsubscribe = s.disks.Subscribe()
		defer unsubscribe()
	}
	// Tell the client the subscription is in place, so it can start a VM
	// knowing it will see that VM's events.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case e, ok := <-events:
			if !ok {
				return errgrpc.Errorf(errdefs.ErrResourceExhausted, "event stream fell behind; watch again")
			}
			// DNS settings are every guest's: any watch of more than one
			// VM hears of them.
			dns := e.Kind == vmm.EventDNSChanged
			if owner != "" && e.Info.Owner != owner && !dns {
				continue
			}
			if req.GetVmName() != "" && (e.Info.Name != req.GetVmName() || dns) {
				continue
			}
			if err := stream.Send(event(e)); err != nil {
				return err
			}
		case p, ok := <-progress:
			if !ok {
				return errgrpc.Errorf(errdefs.ErrResourceExhausted, "event stream fell behind; watch again")
			}
			if (owner != "" && p.Key.Owner != owner) || (req.GetVmName() != "" && p.Key.Name != req.GetVmName()) {
				continue
			}
			ev := &pb.Event{Time: timestamppb.New(p.Time), Signal: &pb.Event_DiskImageProgress{DiskImageProgress: concierge.DiskProgress(p)}}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// event converts a manager event to the upstream signal it stands for.
func event(e vmm.Event) *pb.Event {
	in := e.Info
	out := &pb.Event{Time: timestamppb.New(e.Time)}
	switch e.Kind {
	case vmm.EventStartingUp:
		out.Signal = &pb.Event_VmStartingUp{VmStartingUp: &conciergepb.VmStartingUpSignal{
			Name: in.Name, OwnerId: in.Owner, VmType: concierge.VMType(in.Type), Cid: in.CID,
		}}
	case vmm.EventStarted:
		out.Signal = &pb.Event_VmStarted{VmStarted: &conciergepb.VmStartedSignal{
			Name: in.Name, OwnerId: in.Owner, VmInfo: concierge.VMInfo(in), Status: conciergepb.VmStatus_VM_STATUS_RUNNING,
		}}
	case vmm.EventStopping:
		out.Signal = &pb.Event_VmStopping{VmStopping: &conciergepb.VmStoppingSignal{
			Name: in.Name, OwnerId: in.Owner, Cid: in.CID,
		}}
	case vmm.EventDNSChanged:
		out.Signal = &pb.Event_DnsSettingsChanged{DnsSettingsChanged: concierge.DNSSettings(e.DNS)}
	case vmm.EventStopped:
		out.Signal = &pb.Event_VmStopped{VmStopped: &conciergepb.VmStoppedSignal{
			Name: in.Name, OwnerId: in.Owner, Cid: in.CID, Reason: concierge.StopReason(e.Reason),
		}}
		out.Detail = e.Detail
	}
	return out
}
