package kata

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// DriverOverlay mounts an overlay filesystem (Kata's "overlayfs" driver):
// a container's writable root over a read-only image, the image's tree
// as lowerdir, upperdir and workdir on storage listed before it (a
// tmpfs, say), so that each container writes to its own layer and every
// container of the image reads the one lower copy.
const DriverOverlay = "overlayfs"

const fstypeOverlay = "overlay"

// overlaySpec checks an overlay storage: its options are mount flags and
// lowerdir (one or more directories, ':' between them), upperdir and
// workdir (both or neither), each absolute, clean and below storageRoot,
// with none of the characters overlay's option parser reads (',', ':',
// '\\', '='), and the overlay options index, xino, redirect_dir, metacopy
// and volatile. Without an upper layer it is read-only and needs two
// lower directories, as the kernel does.
func (s Storage) overlaySpec(field string) (mountSpec, error) {
	if s.FSType != "" && s.FSType != fstypeOverlay {
		return mountSpec{}, errdefs.InvalidArgument(field+".fstype", fmt.Sprintf("%q for driver overlayfs; want overlay or nothing", s.FSType))
	}
	var flags uintptr
	var data []string
	var lower []string
	var upper, work string
	for _, o := range s.Options {
		if f, ok := mountFlags[o]; ok {
			flags = flags&^f.clear | f.set
			continue
		}
		key, value, _ := strings.Cut(o, "=")
		switch key {
		case "lowerdir":
			if lower != nil {
				return mountSpec{}, errdefs.InvalidArgument(field+".options", "lowerdir given twice")
			}
			lower = strings.Split(value, ":")
			for _, d := range lower {
				if err := checkOverlayDir(field+".options", "lowerdir", d); err != nil {
					return mountSpec{}, err
				}
			}
		case "upperdir", "workdir":
			if err := checkOverlayDir(field+".options", key, value); err != nil {
				return mountSpec{}, err
			}
			if key == "upperdir" {
				upper = value
			} else {
				work = value
			}
		case "index", "xino", "redirect_dir", "metacopy":
			if !overlayValues[key][value] {
				return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q is not an overlay option", o))
			}
			data = append(data, o)
		case "volatile":
			if o != "volatile" {
				return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q: volatile takes no value", o))
			}
			data = append(data, o)
		default:
			return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q is not an overlay mount option", o))
		}
	}
	switch {
	case len(lower) == 0:
		return mountSpec{}, errdefs.InvalidArgument(field+".options", "lowerdir must be set")
	case (upper == "") != (work == ""):
		return mountSpec{}, errdefs.InvalidArgument(field+".options", "upperdir and workdir go together")
	case upper == "" && len(lower) < 2:
		return mountSpec{}, errdefs.InvalidArgument(field+".options", "a read-only overlay (no upperdir) needs two lower directories")
	case upper != "" && (upper == work || strings.HasPrefix(work, upper+"/") || strings.HasPrefix(upper, work+"/")):
		return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("upperdir %q and workdir %q must be apart", upper, work))
	}
	for _, d := range append(lower, upper) {
		if d != "" && (d == s.MountPoint || strings.HasPrefix(d, s.MountPoint+"/")) {
			return mountSpec{}, errdefs.InvalidArgument(field+".options", fmt.Sprintf("%q is inside the mount point %q", d, s.MountPoint))
		}
	}
	opts := []string{"lowerdir=" + strings.Join(lower, ":")}
	if upper != "" {
		opts = append(opts, "upperdir="+upper, "workdir="+work)
	}
	return mountSpec{source: fstypeOverlay, fstype: fstypeOverlay, flags: flags, data: strings.Join(append(opts, data...), ",")}, nil
}

// overlayValues are the values the overlay options the driver passes on
// take.
var overlayValues = map[string]map[string]bool{
	"index":        {"on": true, "off": true},
	"xino":         {"on": true, "off": true, "auto": true},
	"redirect_dir": {"on": true, "off": true, "follow": true, "nofollow": true},
	"metacopy":     {"on": true, "off": true},
}

// checkOverlayDir checks one directory of an overlay's options.
func checkOverlayDir(field, key, d string) error {
	switch {
	case d == "":
		return errdefs.InvalidArgument(field, key+" has an empty directory")
	case strings.ContainsAny(d, ",:\\=\x00"):
		return errdefs.InvalidArgument(field, fmt.Sprintf("%s %q holds a character overlay's options read (',', ':', '\\\\', '=')", key, d))
	case !filepath.IsAbs(d) || filepath.Clean(d) != d:
		return errdefs.InvalidArgument(field, fmt.Sprintf("%s %q is not an absolute clean path", key, d))
	case !strings.HasPrefix(d, storageRoot+"/"):
		return errdefs.InvalidArgument(field, fmt.Sprintf("%s %q is not below %s/", key, d, storageRoot))
	}
	return nil
}
