package concierge

import (
	"fmt"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// startStorage fills in spec what StartVm asks of disks, shares and
// Termina: req's disks (concierge's DiskImage: a daemon-side path, which
// the manager checks against the allowed roots), ext's shares,
// start_termina and features. writable_rootfs needs nothing: cabin's
// guest root is its initramfs, in RAM, always writable (and gone with
// the VM).
func startStorage(req *pb.StartVmRequest, ext Extensions, spec *vmm.Spec) error {
	for i, d := range req.GetDisks() {
		disk, err := Disk(fmt.Sprintf("disks[%d]", i), d)
		if err != nil {
			return err
		}
		spec.Disks = append(spec.Disks, disk)
	}
	spec.Shares = ext.Shares
	spec.StartTermina = req.GetStartTermina()
	for i, f := range req.GetFeatures() {
		field := fmt.Sprintf("features[%d]", i)
		switch f {
		case pb.StartVmRequest_USED_BY_TESTS, pb.StartVmRequest_LXD_5_LTS:
			// Passed on to the guest's StartTermina, as upstream does;
			// LXD 5 is what tremplin would run, and the guest says
			// when it has none.
			spec.TerminaFeatures = append(spec.TerminaFeatures, int32(f))
		case pb.StartVmRequest_START_LXD, pb.StartVmRequest_RESET_LXD_ON_LAUNCH, pb.StartVmRequest_LXD_4_LTS:
			return errdefs.InvalidArgument(field, fmt.Sprintf("%v is deprecated upstream and does nothing; LXD_5_LTS is the one LXD", f))
		default:
			return errdefs.InvalidArgument(field, fmt.Sprintf("%v is no Termina feature cabin knows", f))
		}
	}
	return nil
}

// Disk is cabin's disk for concierge's DiskImage d of a StartVm
// (field names it in errors).
func Disk(field string, d *pb.DiskImage) (vmm.Disk, error) {
	disk := vmm.Disk{Path: d.GetPath(), Writable: d.GetWritable()}
	switch d.GetImageType() {
	case pb.DiskImageType_DISK_IMAGE_RAW:
		disk.Format = hypervisor.DiskRaw
	case pb.DiskImageType_DISK_IMAGE_QCOW2:
		disk.Format = hypervisor.DiskQcow2
	case pb.DiskImageType_DISK_IMAGE_AUTO:
		// The format the store's image has by its name; any other
		// file is refused: cabin never probes.
	default:
		return vmm.Disk{}, errdefs.InvalidArgument(field+".image_type", fmt.Sprintf("%v: want DISK_IMAGE_RAW, DISK_IMAGE_QCOW2 or DISK_IMAGE_AUTO (Plugin VM images need a Plugin VM, which this host cannot run)", d.GetImageType()))
	}
	if d.GetBlockSize() != 0 {
		return vmm.Disk{}, errdefs.Errorf(errdefs.ErrNotImplemented, "%s.block_size: %d: only ARCVM's disks take a block size upstream; cabin's have the default (512 bytes)", field, d.GetBlockSize())
	}
	if d.GetODirect() {
		return vmm.Disk{}, errdefs.Errorf(errdefs.ErrNotImplemented, "%s.o_direct: cabin's disks go through the host's page cache (docs/decisions.md §17)", field)
	}
	// multiple_workers is a crosvm tuning: QEMU serves every disk from
	// its thread pool (aio=threads) either way.
	if d.GetDoMount() {
		disk.Mount = &vmm.DiskMount{Target: d.GetMountPoint(), FSType: d.GetFstype(), Flags: d.GetFlags(), Data: d.GetData()}
	}
	return disk, nil
}
