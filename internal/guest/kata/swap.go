package kata

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// AddSwap: swap on a disk the host attached, named by its PCI path (see
// blockdev.go for a microvm). A disk that holds a swap area is used as it
// is; a blank one (all zeros at both ends, as a new sparse image reads)
// gets a swap area first, the header written here as mkswap writes it;
// one that holds anything else is refused and left alone.

const (
	// swapMagic ends a swap area's first page.
	swapMagic = "SWAPSPACE2"
	// swapHeaderOffset is where the header starts, after the boot
	// block.
	swapHeaderOffset = 1024
	// minSwapPages is the smallest swap area mkswap makes.
	minSwapPages = 10
	// blankSpan is how much of each end of a disk must be zeros for it to
	// be blank: every partition table and filesystem signature is there.
	blankSpan = 1 << 20
)

// AddSwap turns on swap on the disk at the PCI path slots.
func (s *Sandbox) AddSwap(ctx context.Context, slots []uint32) error {
	const field = "PCIPath"
	if err := checkSlots(field, slots); err != nil {
		return err
	}
	if err := s.cfg.WaitModules(ctx); err != nil {
		return err
	}
	dev, err := findDisk(ctx, field, formatSlots(slots))
	if err != nil {
		return err
	}
	if err := swapFree(dev); err != nil {
		return err
	}
	if err := prepareSwap(dev); err != nil {
		return err
	}
	if err := swapon(dev); err != nil {
		return fmt.Errorf("swapon %s: %w", dev, err)
	}
	s.log.Info("swap on", "device", dev)
	return nil
}

// swapFree checks that dev is neither swapped on nor mounted.
func swapFree(dev string) error {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return fmt.Errorf("swap: %w", err)
	}
	if slices.Contains(swapDevices(b), dev) {
		return errdefs.Errorf(errdefs.ErrAlreadyExists, "swap is on on %s already", dev)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return fmt.Errorf("swap: %w", err)
	}
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return unix.Mkdev(uint32(m.Major), uint32(m.Minor)) != st.Rdev, false
	})
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	if len(ms) > 0 {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is mounted on %s: not for swap", dev, ms[0].Mountpoint)
	}
	return nil
}

// swapDevices reads the file names in /proc/swaps (its first column,
// after the header line).
func swapDevices(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		if f := strings.Fields(sc.Text()); !first && len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}

// prepareSwap writes a swap area on dev unless it has one; a disk that is
// neither a swap area nor blank is refused.
func prepareSwap(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is in use: %w", dev, err)
		}
		return fmt.Errorf("swap: %w", err)
	}
	defer f.Close()
	size, err := ioctlSize(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("swap: size of %s: %w", dev, err)
	}
	page := os.Getpagesize()
	first := make([]byte, page)
	if _, err := f.ReadAt(first, 0); err != nil {
		return fmt.Errorf("swap: read %s: %w", dev, err)
	}
	if _, ok := parseSwapHeader(first); ok {
		return nil
	}
	blank, err := isBlank(f, size)
	if err != nil {
		return fmt.Errorf("swap: read %s: %w", dev, err)
	}
	if !blank {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s holds data and no swap area: only a blank disk is made swap", dev)
	}
	var uuid [16]byte
	rand.Read(uuid[:])
	uuid[6], uuid[8] = uuid[6]&0x0f|0x40, uuid[8]&0x3f|0x80 // version 4
	hdr, err := swapHeader(size, page, uuid)
	if err != nil {
		return fmt.Errorf("swap on %s: %w", dev, err)
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("swap: write %s: %w", dev, err)
	}
	return f.Sync()
}

// isBlank tells whether the first and last blankSpan bytes of f are
// zeros.
func isBlank(f *os.File, size uint64) (bool, error) {
	buf := make([]byte, min(size, blankSpan))
	for _, off := range []int64{0, int64(size) - int64(len(buf))} {
		if _, err := f.ReadAt(buf, off); err != nil {
			return false, err
		}
		for _, b := range buf {
			if b != 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

// swapHeader is the first page of a swap area of size bytes in pages of
// page bytes (struct swap_header, version 1, no bad pages).
func swapHeader(size uint64, page int, uuid [16]byte) ([]byte, error) {
	pages := size / uint64(page)
	if pages < minSwapPages {
		return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "%d bytes is too small for swap (%d pages of %d at least)", size, minSwapPages, page)
	}
	last := min(pages-1, 1<<32-1)
	b := make([]byte, page)
	h := b[swapHeaderOffset:]
	binary.NativeEndian.PutUint32(h[0:], 1) // version
	binary.NativeEndian.PutUint32(h[4:], uint32(last))
	binary.NativeEndian.PutUint32(h[8:], 0) // bad pages
	copy(h[12:28], uuid[:])
	copy(b[page-len(swapMagic):], swapMagic)
	return b, nil
}

// parseSwapHeader reads the first page of a disk: a version 1 swap area's
// last page, and whether it is one.
func parseSwapHeader(page []byte) (last uint32, ok bool) {
	if len(page) < swapHeaderOffset+12 || !bytes.HasSuffix(page, []byte(swapMagic)) {
		return 0, false
	}
	h := page[swapHeaderOffset:]
	if binary.NativeEndian.Uint32(h[0:]) != 1 {
		return 0, false
	}
	last = binary.NativeEndian.Uint32(h[4:])
	return last, last >= minSwapPages-1
}

// swapon turns swap on on dev, with the kernel's default priority.
func swapon(dev string) error {
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); e != 0 {
		return e
	}
	return nil
}
