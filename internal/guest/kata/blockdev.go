package kata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Finding the guest's node of a virtio-blk disk the host names.
//
// A Kata runtime names a hot-plugged disk by its PCI path: the slots from
// the root bus down, "02/03" (hex), for the disk in slot 3 behind the
// bridge in slot 2. cabin's q35 VMs have a PCI bus and the path is
// resolved through sysfs, as upstream. A microvm has none: its disks are
// virtio-mmio devices, which the guest names vda, vdb, ... in the order
// cabind attaches them. There a PCI path of one element N names the disk
// in position N, vda being 0 (docs/decisions.md §26). A storage can also
// name the node itself (/dev/vdb), as Kata's "mmioblk" driver does.

// pciRoot is the guest's PCI root bus in sysfs.
const pciRoot = "/sys/devices/pci0000:00"

const (
	// maxPCIDepth bounds a PCI path: a bus number is 8 bits, and no guest
	// nests bridges deeper than this.
	maxPCIDepth = 8
	// maxSlot is the highest PCI device slot.
	maxSlot = 0x1f
	// deviceWait is how long a disk the host just plugged may take to
	// appear, as upstream waits.
	deviceWait = 10 * time.Second
)

// parsePCIPath reads a PCI path as a storage's source spells it: slots in
// hex, "/"-separated.
func parsePCIPath(field, s string) ([]uint32, error) {
	parts := strings.Split(s, "/")
	if s == "" || len(parts) > maxPCIDepth {
		return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is neither a /dev path nor a PCI path (hex slots, such as 02/03)", s))
	}
	var slots []uint32
	for _, p := range parts {
		n, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) > 2 || n > maxSlot {
			return nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is neither a /dev path nor a PCI path (hex slots up to 1f, such as 02/03)", s))
		}
		slots = append(slots, uint32(n))
	}
	return slots, nil
}

// checkSlots checks a PCI path given as numbers.
func checkSlots(field string, slots []uint32) error {
	if len(slots) == 0 || len(slots) > maxPCIDepth {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d elements; want 1 to %d", len(slots), maxPCIDepth))
	}
	for i, s := range slots {
		if s > maxSlot {
			return errdefs.InvalidArgument(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%d is not a PCI slot (0 to 31)", s))
		}
	}
	return nil
}

// diskName is the kernel's name for the virtio-blk disk in position n:
// vda ... vdz, vdaa ...
func diskName(n uint32) string {
	var b []byte
	for m := uint64(n) + 1; m > 0; m = (m - 1) / 26 {
		b = append([]byte{byte('a' + (m-1)%26)}, b...)
	}
	return "vd" + string(b)
}

// pciDisk finds the node of the virtio-blk disk at the PCI path slots,
// below the sysfs PCI root root (see the top of this file for a guest
// without one).
func pciDisk(root string, slots []uint32) (string, error) {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		if len(slots) != 1 {
			return "", errdefs.Errorf(errdefs.ErrInvalidArgument,
				"this guest has no PCI bus (a microvm): a PCI path of one element N names its disk in position N (vda is 0)")
		}
		return "/dev/" + diskName(slots[0]), nil
	}
	dir := root
	for i, slot := range slots {
		m, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("????:??:%02x.0", slot)))
		if len(m) != 1 {
			return "", errdefs.Errorf(errdefs.ErrNotFound, "no PCI device in slot %02x at depth %d of %s", slot, i, formatSlots(slots))
		}
		dir = m[0]
	}
	m, _ := filepath.Glob(filepath.Join(dir, "virtio*", "block", "*"))
	if len(m) == 0 {
		return "", errdefs.Errorf(errdefs.ErrNotFound, "the PCI device at %s is not a virtio-blk disk", formatSlots(slots))
	}
	return "/dev/" + filepath.Base(m[0]), nil
}

func formatSlots(slots []uint32) string {
	var parts []string
	for _, s := range slots {
		parts = append(parts, fmt.Sprintf("%02x", s))
	}
	return strings.Join(parts, "/")
}

// waitBlock waits, up to deviceWait, for path to be a block device.
func waitBlock(ctx context.Context, field, path string) error {
	deadline := time.Now().Add(deviceWait)
	for {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK:
			return nil
		case err == nil:
			return errdefs.InvalidArgument(field, fmt.Sprintf("%s is not a block device", path))
		case !errors.Is(err, unix.ENOENT):
			return fmt.Errorf("%s: %s: %w", field, path, err)
		case time.Now().After(deadline):
			return errdefs.Errorf(errdefs.ErrNotFound, "%s: no disk %s in the guest after %s", field, path, deviceWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// findDisk resolves a block storage's source, a /dev path or a PCI path,
// to the disk's node, waiting for it to appear.
func findDisk(ctx context.Context, field, source string) (string, error) {
	dev := source
	if !strings.HasPrefix(source, "/dev/") {
		slots, err := parsePCIPath(field, source)
		if err != nil {
			return "", err
		}
		deadline := time.Now().Add(deviceWait)
		for {
			dev, err = pciDisk(pciRoot, slots)
			if err == nil || !errors.Is(err, errdefs.ErrNotFound) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", field, err)
		}
	}
	if err := waitBlock(ctx, field, dev); err != nil {
		return "", err
	}
	return dev, nil
}

// ioctlSize is the size in bytes of the block device open at fd.
func ioctlSize(fd int) (uint64, error) {
	var n uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); e != 0 {
		return 0, e
	}
	return n, nil
}
