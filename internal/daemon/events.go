package daemon

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/vmm"
)

// eventsServer serves cabin.v1.Events: the concierge D-Bus signals as a
// stream.
type eventsServer struct {
	cabinv1.UnimplementedEventsServer
	m *vmm.Manager
}

func (s *eventsServer) Watch(req *cabinv1.WatchRequest, stream grpc.ServerStreamingServer[cabinv1.Event]) error {
	events, cancel := s.m.Subscribe()
	defer cancel()
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
				return status.Error(codes.ResourceExhausted, "event stream fell behind; watch again")
			}
			if req.GetOwnerId() != "" && e.Info.Owner != req.GetOwnerId() {
				continue
			}
			if req.GetVmName() != "" && e.Info.Name != req.GetVmName() {
				continue
			}
			if err := stream.Send(event(e)); err != nil {
				return err
			}
		}
	}
}

// event converts a manager event to the upstream signal it stands for.
func event(e vmm.Event) *cabinv1.Event {
	in := e.Info
	out := &cabinv1.Event{Time: timestamppb.New(e.Time)}
	switch e.Kind {
	case vmm.EventStartingUp:
		out.Signal = &cabinv1.Event_VmStartingUp{VmStartingUp: &concierge.VmStartingUpSignal{
			Name: in.Name, OwnerId: in.Owner, VmType: concierge.VmInfo_VmType(in.VMType), Cid: in.CID,
		}}
	case vmm.EventStarted:
		out.Signal = &cabinv1.Event_VmStarted{VmStarted: &concierge.VmStartedSignal{
			Name: in.Name, OwnerId: in.Owner, VmInfo: vmInfo(in), Status: concierge.VmStatus_VM_STATUS_RUNNING,
		}}
	case vmm.EventStopping:
		out.Signal = &cabinv1.Event_VmStopping{VmStopping: &concierge.VmStoppingSignal{
			Name: in.Name, OwnerId: in.Owner, Cid: in.CID,
		}}
	case vmm.EventStopped:
		out.Signal = &cabinv1.Event_VmStopped{VmStopped: &concierge.VmStoppedSignal{
			Name: in.Name, OwnerId: in.Owner, Cid: in.CID, Reason: stopReason(e.Reason),
		}}
	}
	return out
}
