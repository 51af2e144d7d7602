package kata

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Storage is a filesystem the sandbox or a container uses, mounted in the
// guest at MountPoint (Kata's Storage message).
type Storage struct {
	Driver        string
	DriverOptions []string
	// Source is the 9p share's tag; other drivers ignore it.
	Source string
	FSType string
	// Options are mount options: flags such as "ro" and "nodev", and the
	// filesystem's own key=value options.
	Options    []string
	MountPoint string
	// FSGroup is set when the client asked for the group ownership of the
	// volume to be changed, which is not supported.
	FSGroup bool
}

// The storage drivers.
const (
	// Driver9P mounts the virtio-9p share tagged Source.
	Driver9P = "9p"
	// DriverLocal makes a directory.
	DriverLocal = "local"
	// DriverEphemeral mounts a tmpfs.
	DriverEphemeral = "ephemeral"
)

// fstype9P is the file system type of a 9p storage.
const fstype9P = "9p"

// mountFlags are the generic mount options, as mount(8) spells them: the
// flags each sets and clears.
var mountFlags = map[string]struct{ set, clear uintptr }{
	"ro":         {unix.MS_RDONLY, 0},
	"rw":         {0, unix.MS_RDONLY},
	"nosuid":     {unix.MS_NOSUID, 0},
	"suid":       {0, unix.MS_NOSUID},
	"nodev":      {unix.MS_NODEV, 0},
	"dev":        {0, unix.MS_NODEV},
	"noexec":     {unix.MS_NOEXEC, 0},
	"exec":       {0, unix.MS_NOEXEC},
	"noatime":    {unix.MS_NOATIME, 0},
	"relatime":   {unix.MS_RELATIME, 0},
	"nodiratime": {unix.MS_NODIRATIME, 0},
	"sync":       {unix.MS_SYNCHRONOUS, 0},
	"dirsync":    {unix.MS_DIRSYNC, 0},
}

// fsOptions are the filesystem options passed through to mount(2), by
// filesystem: anything else (another transport for 9p, say) is refused.
var fsOptions = map[string][]string{
	"9p": {"trans", "version", "msize", "cache", "access", "posixacl", "dfltuid", "dfltgid",
		"uname", "aname", "noextend", "nodevmap", "locktimeout"},
	"tmpfs": {"size", "nr_blocks", "nr_inodes", "mode", "uid", "gid", "huge", "mpol"},
}

// maxTag is the longest 9p tag: virtio-9p's config space field is 16-bit,
// but QEMU refuses tags longer than this.
const maxTag = 255

// mountSpec is what mounting a storage comes to; fstype is empty for a
// local directory, which is made, not mounted.
type mountSpec struct {
	source, fstype string
	flags          uintptr
	data           string
	// mode, when not zero, is set on a local directory.
	mode uint32
	// disk: source names a disk (blockdev.go), found when mounting.
	disk bool
	// bind: source is a directory in the guest, bound (storage_bind.go).
	bind bool
}

// spec checks s, all but its mount point (see checkMountPoint), and says
// how to mount it. field names s in errors.
func (s Storage) spec(field string) (mountSpec, error) {
	if len(s.DriverOptions) > 0 {
		return mountSpec{}, errdefs.InvalidArgument(field+".driver_options", "not supported")
	}
	if s.FSGroup {
		return mountSpec{}, errdefs.InvalidArgument(field+".fs_group", "not supported")
	}
	switch s.Driver {
	case Driver9P:
		if s.FSType != "" && s.FSType != fstype9P {
			return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q for driver 9p; want 9p or nothing", s.FSType))
		}
		if s.Source == "" || len(s.Source) > maxTag || strings.ContainsAny(s.Source, "\x00,") {
			return mountSpec{}, errdefs.InvalidArgument(field+".source", fmt.Sprintf("%q is not a 9p tag", s.Source))
		}
		flags, data, err := parseOptions(field+".options", fstype9P, s.Options)
		if err != nil {
			return mountSpec{}, err
		}
		if !slices.ContainsFunc(data, func(o string) bool { return strings.HasPrefix(o, "trans=") }) {
			data = append([]string{"trans=virtio"}, data...)
		}
		return mountSpec{source: s.Source, fstype: fstype9P, flags: flags, data: strings.Join(data, ",")}, nil
	case DriverEphemeral:
		if s.FSType != "" && s.FSType != "tmpfs" {
			return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q for driver ephemeral; want tmpfs or nothing", s.FSType))
		}
		flags, data, err := parseOptions(field+".options", "tmpfs", s.Options)
		if err != nil {
			return mountSpec{}, err
		}
		return mountSpec{source: "tmpfs", fstype: "tmpfs", flags: flags, data: strings.Join(data, ",")}, nil
	case DriverLocal:
		if s.FSType != "" && s.FSType != "local" {
			return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q for driver local; want local or nothing", s.FSType))
		}
		var spec mountSpec
		for _, o := range s.Options {
			v, ok := strings.CutPrefix(o, "mode=")
			mode, err := strconv.ParseUint(v, 8, 32)
			if !ok || err != nil || mode > 0o7777 {
				return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q: driver local takes only mode=<octal>", o))
			}
			spec.mode = uint32(mode)
		}
		return spec, nil
	case DriverOverlay:
		return s.overlaySpec(field)
	case DriverBlk, DriverVirtioBlk, DriverMmioBlk:
		return s.blockSpec(field)
	case DriverBind, DriverWatchableBind:
		return s.bindSpec(field)
	case "":
		return mountSpec{}, errdefs.InvalidArgument(field+".driver", "must be set")
	default:
		return mountSpec{}, errdefs.InvalidArgument(field+".driver", fmt.Sprintf("%q is not supported (9p, local, ephemeral, overlayfs, blk, virtio-blk, mmioblk, bind, watchable-bind)", s.Driver))
	}
}

// parseOptions splits options into mount flags and fstype's own options,
// refusing any it does not know. An option may not hold a comma: it would
// smuggle in another one.
func parseOptions(field, fstype string, options []string) (uintptr, []string, error) {
	var flags uintptr
	var data []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			flags = flags&^f.clear | f.set
			continue
		}
		key, value, _ := strings.Cut(o, "=")
		if o == "" || strings.ContainsAny(o, ",\x00") || !slices.Contains(fsOptions[fstype], key) {
			return 0, nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a %s mount option", o, fstype))
		}
		if key == "trans" && value != "virtio" {
			return 0, nil, errdefs.InvalidArgument(field, fmt.Sprintf("%q: only trans=virtio is supported", o))
		}
		data = append(data, o)
	}
	return flags, data, nil
}

// checkMountPoint checks that p is absolute, clean and below /run/, and
// neither holds nor is inside the agent's own directories (reserved),
// which a mount would hide or change.
func checkMountPoint(field, p string, reserved []string) error {
	switch {
	case p == "":
		return errdefs.InvalidArgument(field, "must be set")
	case strings.IndexByte(p, 0) >= 0:
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q contains a NUL byte", p))
	case !filepath.IsAbs(p):
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not absolute", p))
	case filepath.Clean(p) != p:
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not clean (%q)", p, filepath.Clean(p)))
	case !strings.HasPrefix(p, storageRoot+"/"):
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not below %s/", p, storageRoot))
	}
	for _, r := range reserved {
		if p == r || strings.HasPrefix(p, r+"/") || strings.HasPrefix(r, p+"/") {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q overlaps the agent's own %s", p, r))
		}
	}
	return nil
}

func (s Storage) equal(o Storage) bool {
	return s.Driver == o.Driver && s.Source == o.Source && s.FSType == o.FSType &&
		slices.Equal(s.Options, o.Options) && slices.Equal(s.DriverOptions, o.DriverOptions) &&
		s.MountPoint == o.MountPoint && s.FSGroup == o.FSGroup
}
