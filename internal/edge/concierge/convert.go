package concierge

import (
	"encoding/binary"
	"net/netip"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Status is upstream's status of a VM in state s.
func Status(s vmm.State) pb.VmStatus {
	switch s {
	case vmm.StateStarting:
		return pb.VmStatus_VM_STATUS_STARTING
	case vmm.StateRunning:
		return pb.VmStatus_VM_STATUS_RUNNING
	case vmm.StateStopped:
		return pb.VmStatus_VM_STATUS_STOPPED
	}
	return pb.VmStatus_VM_STATUS_UNKNOWN
}

// VMInfo is upstream's VmInfo of in.
func VMInfo(in vmm.Info) *pb.VmInfo {
	return &pb.VmInfo{
		Pid:             int32(in.PID),
		Cid:             in.CID,
		VmType:          VMType(in.Type),
		Status:          Status(in.State),
		AllocatedMemory: int64(in.MemoryMiB) << 20,
		Ipv4Address:     wireIPv4(in.IPv4),
	}
}

// wireIPv4 is an IPv4 address as a fixed32 field carries it: in network
// byte order, so its little-endian bytes are the address's
// (spec/semantics.md); 0 for none.
func wireIPv4(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

// DNSSettings is upstream's message of the DNS settings guests are given.
func DNSSettings(d vmm.DNS) *pb.DnsSettings {
	return &pb.DnsSettings{Nameservers: d.Nameservers, SearchDomains: d.SearchDomains}
}

// StopReason is upstream's reason for a stop.
func StopReason(r vmm.StopReason) pb.VmStopReason {
	switch r {
	case vmm.StopRequested:
		return pb.VmStopReason_STOP_VM_REQUESTED
	case vmm.StopAllRequested:
		return pb.VmStopReason_STOP_ALL_VMS_REQUESTED
	case vmm.StopDiskDestroyed:
		return pb.VmStopReason_DESTROY_DISK_IMAGE_REQUESTED
	}
	return pb.VmStopReason_VM_EXITED
}

// vmTypes pairs cabin's VM types with upstream's.
var vmTypes = []struct {
	cabin vmm.VMType
	wire  pb.VmInfo_VmType
}{
	{vmm.VMTypeUnknown, pb.VmInfo_UNKNOWN},
	{vmm.VMTypeTermina, pb.VmInfo_TERMINA},
	{vmm.VMTypeARC, pb.VmInfo_ARC_VM},
	{vmm.VMTypePlugin, pb.VmInfo_PLUGIN_VM},
	{vmm.VMTypeBorealis, pb.VmInfo_BOREALIS},
	{vmm.VMTypeBruschetta, pb.VmInfo_BRUSCHETTA},
	{vmm.VMTypeBaguette, pb.VmInfo_BAGUETTE},
}

// VMType is upstream's type of a VM of type t; UNKNOWN for a type it does
// not have.
func VMType(t vmm.VMType) pb.VmInfo_VmType {
	for _, v := range vmTypes {
		if v.cabin == t {
			return v.wire
		}
	}
	return pb.VmInfo_UNKNOWN
}

// vmType is cabin's type of a VM a request says is of type t.
func vmType(t pb.VmInfo_VmType) vmm.VMType {
	for _, v := range vmTypes {
		if v.wire == t {
			return v.cabin
		}
	}
	return vmm.VMTypeUnknown
}
