package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// virtioDiskRE is what virtio_blk names its disks: vda, vdb, ..., vdaa.
var virtioDiskRE = regexp.MustCompile(`^vd[a-z]+$`)

// findDisk returns the VM's first virtio-blk disk (vda before vdb, vdz
// before vdaa) that is not mounted, it or a partition of it, anywhere but
// on the mount point: the root filesystem's disk, were there one, and a
// disk the host had mounted elsewhere are not the stateful disk.
func (s *Stateful) findDisk() (string, error) {
	entries, err := os.ReadDir(s.cfg.SysBlock)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("list block devices: %w", err)
	}
	var disks []string
	for _, e := range entries {
		if virtioDiskRE.MatchString(e.Name()) {
			disks = append(disks, e.Name())
		}
	}
	slices.SortFunc(disks, func(a, b string) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return "", fmt.Errorf("list mounts: %w", err)
	}
	for _, d := range disks {
		devs, err := s.diskDevs(d)
		if err != nil {
			s.log.Warn("stateful disk: skip a disk", "disk", d, "err", err)
			continue
		}
		if where := mountedElsewhere(mounts, devs, s.cfg.MountPoint); where != "" {
			s.log.Debug("stateful disk: skip a mounted disk", "disk", d, "on", where)
			continue
		}
		return filepath.Join(s.cfg.DevDir, d), nil
	}
	return "", errdefs.Errorf(errdefs.ErrFailedPrecondition,
		"no stateful disk: the VM has no virtio-blk disk that is not mounted elsewhere (StartTermina's stateful_device may name one)")
}

// diskDevs returns the device numbers ("major:minor") of disk and its
// partitions, from sysfs.
func (s *Stateful) diskDevs(disk string) ([]string, error) {
	dir := filepath.Join(s.cfg.SysBlock, disk)
	dev, err := os.ReadFile(filepath.Join(dir, "dev"))
	if err != nil {
		return nil, err
	}
	devs := []string{strings.TrimSpace(string(dev))}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), disk) {
			continue
		}
		if p, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev")); err == nil {
			devs = append(devs, strings.TrimSpace(string(p)))
		}
	}
	return devs, nil
}

// mountedElsewhere returns where one of devs is mounted, other than on
// point, or "".
func mountedElsewhere(mounts []*mountinfo.Info, devs []string, point string) string {
	for _, m := range mounts {
		if m.Mountpoint != point && slices.Contains(devs, fmt.Sprintf("%d:%d", m.Major, m.Minor)) {
			return m.Mountpoint
		}
	}
	return ""
}

// blockDevice returns the device number of the block device at path.
func blockDevice(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, errdefs.Errorf(errdefs.ErrNotFound, "stateful disk %s: no such device", path)
		}
		return 0, fmt.Errorf("stateful disk %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, errdefs.InvalidArgument("stateful_device", fmt.Sprintf("%s is not a block device", path))
	}
	return st.Rdev, nil
}

// mounted is a filesystem mounted on a directory.
type mounted struct {
	dev            uint64
	fstype, source string
}

// mountedOn returns the filesystem mounted on dir, the last one, or nil
// when none is.
func mountedOn(dir string) (*mounted, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	if len(ms) == 0 {
		return nil, nil
	}
	m := ms[len(ms)-1]
	return &mounted{dev: unix.Mkdev(uint32(m.Major), uint32(m.Minor)), fstype: m.FSType, source: m.Source}, nil
}

// blankSpan is how much of each end of a disk isBlank reads. Every
// partition table and filesystem leaves its mark within the first MiB
// (MBR, GPT, the superblocks of ext*, xfs, btrfs, f2fs, LVM and LUKS
// headers, swap, iso9660) or the last (GPT's backup, md 0.90/1.0, ZFS's
// last labels).
const blankSpan = 1 << 20

// isBlank tells whether device holds nothing but zeros in its first and
// last MiB: a disk nobody has written to yet, as a new sparse image is.
func isBlank(device string) (bool, error) {
	f, err := os.Open(device)
	if err != nil {
		return false, fmt.Errorf("stateful disk: %w", err)
	}
	defer f.Close()
	size, err := ioctlSize(int(f.Fd()))
	if err != nil {
		return false, fmt.Errorf("stateful disk %s: size: %w", device, err)
	}
	buf := make([]byte, min(size, blankSpan))
	for _, off := range []int64{0, int64(size) - int64(len(buf))} {
		if _, err := f.ReadAt(buf, off); err != nil {
			return false, fmt.Errorf("stateful disk %s: read: %w", device, err)
		}
		if !allZero(buf) {
			return false, nil
		}
	}
	return true, nil
}

func allZero(b []byte) bool {
	var zero [4096]byte
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// deviceSize is the size in bytes of the block device at path.
func deviceSize(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	size, err := ioctlSize(fd)
	if err != nil {
		return 0, fmt.Errorf("%s: BLKGETSIZE64: %w", path, err)
	}
	return size, nil
}

func ioctlSize(fd int) (uint64, error) {
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, errno
	}
	return size, nil
}

// superblock is what the calls need of an ext2/3/4 superblock.
type superblock struct {
	blockSize uint64
	blocks    uint64
}

// bytes is the filesystem's size.
func (sb superblock) bytes() uint64 { return sb.blocks * sb.blockSize }

// errNotExt4 is readSuperblock's answer for a disk without an ext2/3/4
// superblock.
var errNotExt4 = errors.New("no ext4 superblock")

// readSuperblock reads the ext4 superblock of device. Read through the
// device's page cache, which a mounted filesystem's superblock updates
// (an online resize) go through too.
func readSuperblock(device string) (superblock, error) {
	f, err := os.Open(device)
	if err != nil {
		return superblock{}, err
	}
	defer f.Close()
	return parseSuperblock(io.NewSectionReader(f, 1024, 1024))
}

// The superblock's fields, at their offsets within it (the superblock
// starts 1024 bytes into the disk).
const (
	sbBlocksLo     = 0x04
	sbLogBlockSize = 0x18
	sbMagic        = 0x38
	sbIncompat     = 0x60
	sbBlocksHi     = 0x150

	ext4Magic        = 0xEF53
	incompat64Bit    = 0x80
	maxLogBlockSize  = 6 // 64 KiB blocks
	superblockLength = 1024
)

func parseSuperblock(r io.Reader) (superblock, error) {
	b := make([]byte, superblockLength)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return superblock{}, errNotExt4
		}
		return superblock{}, err
	}
	le := binary.LittleEndian
	if le.Uint16(b[sbMagic:]) != ext4Magic {
		return superblock{}, errNotExt4
	}
	logSize := le.Uint32(b[sbLogBlockSize:])
	if logSize > maxLogBlockSize {
		return superblock{}, fmt.Errorf("%w: block size 2^%d KiB", errNotExt4, logSize)
	}
	blocks := uint64(le.Uint32(b[sbBlocksLo:]))
	if le.Uint32(b[sbIncompat:])&incompat64Bit != 0 {
		blocks |= uint64(le.Uint32(b[sbBlocksHi:])) << 32
	}
	return superblock{blockSize: 1024 << logSize, blocks: blocks}, nil
}

// parseMinimum reads resize2fs -P's estimate, in filesystem blocks.
func parseMinimum(out string) (uint64, error) {
	const prefix = "Estimated minimum size of the filesystem:"
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			return strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
		}
	}
	return 0, fmt.Errorf("resize2fs -P printed no estimate: %q", out)
}
