package cabinv1

import (
	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// sharesOf is the manager's shares for a StartVm's; the manager checks
// them.
func sharesOf(shares []*pb.Share) []vmm.Share {
	var out []vmm.Share
	for _, s := range shares {
		out = append(out, vmm.Share{HostDir: s.GetHostPath(), GuestDir: s.GetGuestPath(), ReadOnly: s.GetReadOnly()})
	}
	return out
}

// storageOf is cabin.v1's description of in's disks and shares.
func storageOf(in vmm.Info) ([]*pb.VmDisk, []*pb.VmShare) {
	var disks []*pb.VmDisk
	for _, d := range in.Disks {
		t := conciergepb.DiskImageType_DISK_IMAGE_RAW
		if d.Format == hypervisor.DiskQcow2 {
			t = conciergepb.DiskImageType_DISK_IMAGE_QCOW2
		}
		disks = append(disks, &pb.VmDisk{
			Id: d.ID, Path: d.Path, Device: d.Device, ImageType: t,
			ReadOnly: d.ReadOnly, Stateful: d.Stateful, MountPoint: d.MountPoint,
		})
	}
	var shares []*pb.VmShare
	for _, s := range in.Shares {
		shares = append(shares, &pb.VmShare{Tag: s.Tag, HostPath: s.HostDir, GuestPath: s.GuestDir, ReadOnly: s.ReadOnly})
	}
	return disks, shares
}
