package qemu

import (
	"context"
	"fmt"
	"strconv"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// diskArgs gives the guest a virtio-blk device per disk, in order, on the
// machine's bus. Each image reaches QEMU as the open file Launch passes
// (exec.Cmd.ExtraFiles, numbered from firstFD), put in an fd set of its
// own with -add-fd and opened by QEMU as /dev/fdset/N, which dups the
// descriptor rather than opening any path: a path swapped after cabind
// checked it cannot redirect the disk. The set's opaque string names the
// disk in QMP's query-fdsets.
//
// Each disk is two block nodes: the protocol node "file-ID" (driver
// file) and the format node "ID" (driver raw or qcow2, always said:
// QEMU never probes). The device's drive is the format node, which is
// also what block_resize names (ResizeDisk).
//
// cache.direct=off, aio=threads: the image goes through the host's page
// cache and QEMU's thread pool. O_DIRECT (cache=none) would need the
// descriptor opened with it, refuses images on tmpfs and overlayfs (where
// cabin's state dir may be), and needs aligned I/O; native AIO and
// io_uring need O_DIRECT to be asynchronous at all. cache.no-flush stays
// off: the guest sees a write cache and its flushes reach the disk, so
// what the guest syncs is on the host's disk. discard=unmap passes the
// guest's discards (mounted with discard, as the stateful disk is) down
// as holes, which keeps sparse images sparse. A read-only disk is
// read-only in both nodes and in the device: QEMU refuses every write.
func diskArgs(machine hypervisor.Machine, disks []hypervisor.Disk, firstFD int) []string {
	dev := "virtio-blk-device" // on virtio-mmio
	if machine == hypervisor.MachineQ35 {
		dev = "virtio-blk-pci"
	}
	var args []string
	for i, d := range disks {
		set := strconv.Itoa(diskFDSet(i))
		ro := "off"
		if d.ReadOnly {
			ro = "on"
		}
		args = append(args,
			"-add-fd", "fd="+strconv.Itoa(firstFD+i)+",set="+set+",opaque=disk-"+d.ID,
			"-blockdev", "driver=file,node-name=file-"+d.ID+",filename=/dev/fdset/"+set+
				",cache.direct=off,cache.no-flush=off,aio=threads,discard=unmap,read-only="+ro,
			"-blockdev", "driver="+string(d.Format)+",node-name="+d.ID+",file=file-"+d.ID+
				",discard=unmap,read-only="+ro,
			"-device", dev+",drive="+d.ID+",serial="+d.ID)
	}
	return args
}

// diskFDSet is the fd set of the index'th disk. Sets start at 1: QEMU
// hands out set ids of its own from 0 to add-fd calls that name none.
func diskFDSet(index int) int { return index + 1 }

// checkDisks accepts the disks: each open, of a known format, with an ID
// of the allowed form, unique (an ID names block nodes, "file-ID" too,
// and a serial).
func checkDisks(disks []hypervisor.Disk) error {
	ids := map[string]bool{}
	for i, d := range disks {
		field := fmt.Sprintf("disks[%d]", i)
		if err := hypervisor.CheckDiskID(d.ID); err != nil {
			return errdefs.InvalidArgument(field+".id", err.Error())
		}
		if ids[d.ID] {
			return errdefs.InvalidArgument(field+".id", fmt.Sprintf("%q is already another disk's", d.ID))
		}
		ids[d.ID] = true
		if d.File == nil {
			return errdefs.InvalidArgument(field+".file", "the image must be passed open")
		}
		switch d.Format {
		case hypervisor.DiskRaw, hypervisor.DiskQcow2:
		default:
			return errdefs.InvalidArgument(field+".format", fmt.Sprintf("%q: want raw or qcow2", d.Format))
		}
	}
	return nil
}

// ResizeDisk sets the disk id's size (QMP block_resize on its format
// node): QEMU grows or shrinks the image (a raw file is truncated, a qcow2
// resized) and the guest's virtio-blk sees the new capacity at once.
func (v *vm) ResizeDisk(ctx context.Context, id string, size int64) error {
	if err := hypervisor.CheckDiskID(id); err != nil {
		return errdefs.InvalidArgument("disk", err.Error())
	}
	if size <= 0 || size%512 != 0 {
		return errdefs.InvalidArgument("size", fmt.Sprintf("%d is not a positive multiple of 512", size))
	}
	qmp, err := v.monitor()
	if err != nil {
		return err
	}
	args := map[string]any{"node-name": id, "size": size}
	if err := qmp.Execute(ctx, "block_resize", args, nil); err != nil {
		return fmt.Errorf("resize disk %s to %d bytes: %w", id, size, err)
	}
	return nil
}

var _ hypervisor.DiskResizer = (*vm)(nil)

// kernelFiles counts the kernel and initrd passed open: the first of
// bootFiles, before the shares' folders and the disks' images.
func kernelFiles(cfg hypervisor.Config) int {
	n := 0
	if cfg.KernelFile != nil {
		n++
	}
	if cfg.InitrdFile != nil {
		n++
	}
	return n
}
