package daemon

import (
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/vmm"
)

func vmStatus(s vmm.State) concierge.VmStatus {
	switch s {
	case vmm.StateStarting:
		return concierge.VmStatus_VM_STATUS_STARTING
	case vmm.StateRunning:
		return concierge.VmStatus_VM_STATUS_RUNNING
	case vmm.StateStopped:
		return concierge.VmStatus_VM_STATUS_STOPPED
	}
	return concierge.VmStatus_VM_STATUS_UNKNOWN
}

func vmInfo(in vmm.Info) *concierge.VmInfo {
	return &concierge.VmInfo{
		Pid:             int32(in.PID),
		Cid:             in.CID,
		VmType:          concierge.VmInfo_VmType(in.VMType),
		Status:          vmStatus(in.State),
		AllocatedMemory: int64(in.MemoryMiB) << 20,
	}
}

func stopReason(r vmm.StopReason) concierge.VmStopReason {
	switch r {
	case vmm.StopRequested:
		return concierge.VmStopReason_STOP_VM_REQUESTED
	case vmm.StopAllRequested:
		return concierge.VmStopReason_STOP_ALL_VMS_REQUESTED
	}
	return concierge.VmStopReason_VM_EXITED
}
