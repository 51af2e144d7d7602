package kata

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Block-device storages: a filesystem on a virtio-blk disk, mounted at
// the storage's mount point. The source is the disk's node (/dev/vdb) or,
// for "blk" and "virtio-blk", its PCI path (blockdev.go).
const (
	// DriverBlk and DriverVirtioBlk name a disk by PCI path or node.
	DriverBlk       = "blk"
	DriverVirtioBlk = "virtio-blk"
	// DriverMmioBlk names a virtio-mmio disk by its node, as Kata's
	// runtime does for machines without PCI.
	DriverMmioBlk = "mmioblk"
)

func isDiskDriver(d string) bool {
	return d == DriverBlk || d == DriverVirtioBlk || d == DriverMmioBlk
}

// diskFSOptions are the filesystems a disk storage may hold and the
// options of theirs passed to mount(2); anything else is refused.
var diskFSOptions = map[string][]string{
	"ext4":     {"discard", "nodiscard", "errors", "data", "noload", "norecovery", "commit", "barrier", "nobarrier", "user_xattr", "nouser_xattr", "acl", "noacl"},
	"ext3":     {"errors", "data", "noload", "norecovery", "commit", "barrier", "nobarrier", "user_xattr", "nouser_xattr", "acl", "noacl"},
	"ext2":     {"errors", "user_xattr", "nouser_xattr", "acl", "noacl"},
	"xfs":      {"discard", "nodiscard", "norecovery", "nouuid", "inode64", "logbufs", "logbsize"},
	"btrfs":    {"discard", "nodiscard", "subvol", "subvolid", "compress", "ssd", "nossd", "degraded"},
	"erofs":    {},
	"squashfs": {},
	"vfat":     {"uid", "gid", "umask", "dmask", "fmask", "utf8", "shortname"},
}

// blockSpec checks a disk storage and says how to mount it.
func (s Storage) blockSpec(field string) (mountSpec, error) {
	if s.Driver == DriverMmioBlk && !strings.HasPrefix(s.Source, "/dev/") {
		return mountSpec{}, errdefs.InvalidArgument(field+".source", fmt.Sprintf("%q: driver mmioblk names the disk's node, /dev/vdX", s.Source))
	}
	if strings.HasPrefix(s.Source, "/dev/") {
		if err := checkAbsClean(field+".source", s.Source); err != nil {
			return mountSpec{}, err
		}
	} else if _, err := parsePCIPath(field+".source", s.Source); err != nil {
		return mountSpec{}, err
	}
	opts, ok := diskFSOptions[s.FSType]
	if !ok {
		return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q: a disk storage holds one of %s", s.FSType, strings.Join(diskFSTypes(), ", ")))
	}
	var flags uintptr
	var data []string
	for _, o := range s.Options {
		if f, ok := mountFlags[o]; ok {
			flags = flags&^f.clear | f.set
			continue
		}
		key, _, _ := strings.Cut(o, "=")
		if o == "" || strings.ContainsAny(o, ",\x00") || !slices.Contains(opts, key) {
			return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q is not a %s mount option", o, s.FSType))
		}
		data = append(data, o)
	}
	return mountSpec{source: s.Source, fstype: s.FSType, flags: flags, data: strings.Join(data, ","), disk: true}, nil
}

func diskFSTypes() []string {
	var out []string
	for t := range diskFSOptions {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}
