package cabinv1

import (
	"testing"
	"time"

	conciergepb "github.com/cabinvm/cabin/api/concierge"

	"github.com/cabinvm/cabin/internal/vmm"
)

func TestEventsCarryUpstreamSignals(t *testing.T) {
	info := vmm.Info{Key: vmm.Key{Owner: "o", Name: "n"}, State: vmm.StateRunning, PID: 7, CID: 33, MemoryMiB: 256}
	now := time.Now()
	started := event(vmm.Event{Kind: vmm.EventStarted, Time: now, Info: info})
	if s := started.GetVmStarted(); s == nil || s.Name != "n" || s.OwnerId != "o" || s.VmInfo.GetPid() != 7 ||
		s.VmInfo.GetCid() != 33 || s.VmInfo.GetAllocatedMemory() != 256<<20 || s.Status != conciergepb.VmStatus_VM_STATUS_RUNNING {
		t.Errorf("started: %v", started)
	}
	if !started.GetTime().AsTime().Equal(now) {
		t.Errorf("time %v, want %v", started.GetTime().AsTime(), now)
	}
	for reason, want := range map[vmm.StopReason]conciergepb.VmStopReason{
		vmm.StopExited:        conciergepb.VmStopReason_VM_EXITED,
		vmm.StopRequested:     conciergepb.VmStopReason_STOP_VM_REQUESTED,
		vmm.StopAllRequested:  conciergepb.VmStopReason_STOP_ALL_VMS_REQUESTED,
		vmm.StopDiskDestroyed: conciergepb.VmStopReason_DESTROY_DISK_IMAGE_REQUESTED,
	} {
		e := event(vmm.Event{Kind: vmm.EventStopped, Info: info, Reason: reason})
		if got := e.GetVmStopped(); got.GetReason() != want || got.GetCid() != 33 {
			t.Errorf("stopped %v: %v", reason, e)
		}
	}
	if e := event(vmm.Event{Kind: vmm.EventStartingUp, Info: info}); e.GetVmStartingUp().GetCid() != 33 {
		t.Errorf("starting up: %v", e)
	}
	if e := event(vmm.Event{Kind: vmm.EventStopping, Info: info}); e.GetVmStopping().GetName() != "n" {
		t.Errorf("stopping: %v", e)
	}
}

func TestEventDNSChanged(t *testing.T) {
	e := event(vmm.Event{Kind: vmm.EventDNSChanged, DNS: vmm.DNS{Nameservers: []string{"192.0.2.53"}}})
	if d := e.GetDnsSettingsChanged(); d == nil || d.GetNameservers()[0] != "192.0.2.53" {
		t.Errorf("DNS event: %v", e)
	}
}
