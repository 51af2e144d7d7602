package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Disk is an extra disk a VM starts with: an image file on this host,
// attached as a virtio-blk device and, with Mount, mounted in the guest
// at bring-up.
//
// Which files may be disks: an image of the VM's owner in cabind's disk
// image store (opened by cabind itself), or a regular file the caller
// could open itself, for reading, and for writing when Writable
// (caller.Caller.Open: each directory on the way searchable by the
// caller, no symbolic link followed after the path's own are resolved).
// Nothing else inside cabind's state directory is: not another owner's
// image, not a VM's files. The file is opened once, checked, and handed
// to QEMU open: the path is never given to QEMU, so a path changed after
// the check cannot lead it elsewhere.
type Disk struct {
	// Path is the image's absolute, clean path.
	Path string
	// Format is the image's format. Empty: the format an image of the
	// store has by its name; any other file needs one said.
	Format hypervisor.DiskFormat
	// Writable lets the guest write the disk; otherwise it is read-only
	// to QEMU and mounted read-only.
	Writable bool
	// Mount, when set, is where the guest mounts the disk at bring-up.
	Mount *DiskMount
}

// DiskMount is how the guest mounts a disk (Maitred's Mount).
type DiskMount struct {
	// Target is an absolute clean path in the guest, made if missing.
	Target string
	// FSType is the filesystem type (ext4, ...): 1 to 16 of [a-z0-9].
	FSType string
	// Flags are mount(2) flags, from mountFlagsAllowed only.
	Flags uint64
	// Data is the filesystem's options (mount(2)'s data).
	Data string
}

// Share is a host folder shared with the guest over virtio-9p and
// mounted in it at bring-up.
//
// The folder must exist, be a directory, and its path must be its real
// path: no symbolic link anywhere in it (a link could be swapped to lead
// elsewhere between the check and QEMU's open, and a path with links
// says something other than what it shares). The caller must be able to
// search its way there and read it, and write it unless ReadOnly; it may
// not be inside cabind's state directory. QEMU is handed the directory
// open, not its path.
type Share struct {
	// HostDir is the host folder; GuestDir where the guest mounts it.
	HostDir, GuestDir string
	ReadOnly          bool
}

// Limits of disks and shares.
const (
	// maxDisks: microvm has eight virtio-mmio slots, taken also by the
	// serial ports, the NIC and the shares; q35 more. Sixteen bounds the
	// command line; the launch fails with QEMU's word past the slots.
	maxDisks   = 16
	maxShares  = 8
	maxPathLen = 4096
	maxMountFS = 16
	maxMountDa = 4096
)

// mountFlagsAllowed are the mount(2) flags a disk's mount may ask for:
// those that only restrict or tune the one mount. Bind, move, remount and
// propagation flags would act on other mounts of the guest.
const mountFlagsAllowed = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC |
	unix.MS_SYNCHRONOUS | unix.MS_DIRSYNC | unix.MS_NOATIME | unix.MS_NODIRATIME |
	unix.MS_RELATIME | unix.MS_STRICTATIME | unix.MS_LAZYTIME | unix.MS_SILENT

// checkDisks checks the form of the disks and shares of s; the files are
// checked as openDisks and openShares open them.
func (s *Spec) checkDisks() error {
	if len(s.Disks) > maxDisks {
		return errdefs.InvalidArgument("disks", fmt.Sprintf("%d disks; at most %d", len(s.Disks), maxDisks))
	}
	for i, d := range s.Disks {
		field := fmt.Sprintf("disks[%d]", i)
		if err := checkHostPath(d.Path); err != nil {
			return errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q %v", d.Path, err))
		}
		switch d.Format {
		case "", hypervisor.DiskRaw, hypervisor.DiskQcow2:
		default:
			return errdefs.InvalidArgument(field+".image_type", fmt.Sprintf("%q: want raw or qcow2", d.Format))
		}
		if d.Mount != nil {
			if err := checkDiskMount(d.Mount); err != nil {
				return errdefs.InvalidArgument(field+".mount_point", err.Error())
			}
		}
	}
	if len(s.Shares) > maxShares {
		return errdefs.InvalidArgument("shares", fmt.Sprintf("%d shares; at most %d", len(s.Shares), maxShares))
	}
	targets := map[string]bool{}
	for i, sh := range s.Shares {
		field := fmt.Sprintf("shares[%d]", i)
		if err := checkHostPath(sh.HostDir); err != nil {
			return errdefs.InvalidArgument(field+".host_path", fmt.Sprintf("%q %v", sh.HostDir, err))
		}
		if err := checkGuestPath(sh.GuestDir); err != nil {
			return errdefs.InvalidArgument(field+".guest_path", fmt.Sprintf("%q %v", sh.GuestDir, err))
		}
		if targets[sh.GuestDir] {
			return errdefs.InvalidArgument(field+".guest_path", fmt.Sprintf("%q is another share's too", sh.GuestDir))
		}
		targets[sh.GuestDir] = true
	}
	return nil
}

// checkHostPath accepts a host path as it may name a disk or a share:
// absolute, clean, and free of control characters (it reaches logs and
// records; QEMU gets a descriptor, not the path).
func checkHostPath(p string) error {
	switch {
	case p == "":
		return errors.New("is empty")
	case len(p) > maxPathLen:
		return fmt.Errorf("is longer than %d bytes", maxPathLen)
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return errors.New("is not an absolute clean path")
	}
	for _, r := range p {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return errors.New("holds a control character or invalid UTF-8")
		}
	}
	return nil
}

// checkGuestPath accepts a path in the guest to mount on: absolute,
// clean, not the root and not in the kernel's own filesystems, which the
// agent needs.
func checkGuestPath(p string) error {
	if err := checkHostPath(p); err != nil {
		return err
	}
	if p == "/" {
		return errors.New("is the guest's root")
	}
	for _, sys := range []string{"/proc", "/sys", "/dev", "/run/cabin"} {
		if p == sys || strings.HasPrefix(p, sys+"/") {
			return fmt.Errorf("is in %s, which the guest's agent needs", sys)
		}
	}
	return nil
}

func checkDiskMount(m *DiskMount) error {
	if err := checkGuestPath(m.Target); err != nil {
		return fmt.Errorf("%q %v", m.Target, err)
	}
	if m.FSType == "" || len(m.FSType) > maxMountFS {
		return fmt.Errorf("fstype %q: want 1 to %d of [a-z0-9]", m.FSType, maxMountFS)
	}
	for _, c := range m.FSType {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("fstype %q: want 1 to %d of [a-z0-9]", m.FSType, maxMountFS)
		}
	}
	if extra := m.Flags &^ mountFlagsAllowed; extra != 0 {
		return fmt.Errorf("flags %#x: %#x are not allowed (only flags that restrict the one mount: ro, nosuid, nodev, noexec, sync, dirsync, noatime, nodiratime, relatime, strictatime, lazytime, silent)", m.Flags, extra)
	}
	if len(m.Data) > maxMountDa {
		return fmt.Errorf("data is longer than %d bytes", maxMountDa)
	}
	for _, r := range m.Data {
		if r < ' ' || r == 0x7f || r == unicode.ReplacementChar {
			return fmt.Errorf("data %q holds a control character", m.Data)
		}
	}
	return nil
}

// openedDisks are a start's disks and shares, open and checked, ready
// for the hypervisor; Close once it has them.
type openedDisks struct {
	disks  []hypervisor.Disk
	shares []hypervisor.Share
}

func (o openedDisks) Close() {
	for _, d := range o.disks {
		d.File.Close()
	}
	for _, s := range o.shares {
		if s.File != nil {
			s.File.Close()
		}
	}
}

// extraDiskID is the disk ID (and serial) of a start's index'th disk.
func extraDiskID(index int) string { return "disk" + strconv.Itoa(index+1) }

// openDisks opens s's disks and shares on its caller's behalf (see Disk
// and Share for the rules), refusing the same disk twice.
func (s *Spec) openDisks(root statedir.Root) (openedDisks, error) {
	var o openedDisks
	seen := map[[2]uint64]int{}
	for i, d := range s.Disks {
		field := fmt.Sprintf("disks[%d]", i)
		hd, err := openDisk(root, s.Owner, s.Caller, field, d)
		if err != nil {
			o.Close()
			return openedDisks{}, err
		}
		hd.ID = extraDiskID(i)
		var st unix.Stat_t
		if err := unix.Fstat(int(hd.File.Fd()), &st); err != nil {
			hd.File.Close()
			o.Close()
			return openedDisks{}, err
		}
		id := [2]uint64{st.Dev, st.Ino}
		if j, ok := seen[id]; ok {
			hd.File.Close()
			o.Close()
			return openedDisks{}, errdefs.InvalidArgument(field+".path",
				fmt.Sprintf("%q is the same file as disks[%d] (%q): the same disk twice", d.Path, j, s.Disks[j].Path))
		}
		seen[id] = i
		o.disks = append(o.disks, hd)
	}
	for i, sh := range s.Shares {
		field := fmt.Sprintf("shares[%d]", i)
		f, err := openShare(root, s.Caller, field, sh)
		if err != nil {
			o.Close()
			return openedDisks{}, err
		}
		o.shares = append(o.shares, hypervisor.Share{
			Tag: shareTag(i), Path: sh.HostDir, File: f, ReadOnly: sh.ReadOnly,
		})
	}
	return o, nil
}

// openDisk opens one disk's image.
func openDisk(root statedir.Root, owner string, c *caller.Caller, field string, d Disk) (hypervisor.Disk, error) {
	denied := func(err error) error {
		if c.Trusted() {
			return errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q: %v", d.Path, err))
		}
		return errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q: no such file, or not one the caller may %s", d.Path, access(d.Writable)))
	}
	resolved, err := filepath.EvalSymlinks(d.Path)
	if err != nil {
		return hypervisor.Disk{}, denied(unwrapPathError(err))
	}
	if st, err := os.Stat(resolved); err == nil && st.IsDir() && c.Trusted() {
		return hypervisor.Disk{}, errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q is a directory, not an image", d.Path))
	}
	format := d.Format
	var f *os.File
	if storeFormat, ok := diskimage.ImageFormat(root, owner, resolved); ok {
		// One of the owner's images: cabind's own file, which it opens
		// itself, the format its name says.
		want := hypervisor.DiskRaw
		if storeFormat == diskimage.FormatQcow2 {
			want = hypervisor.DiskQcow2
		}
		if format != "" && format != want {
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".image_type", fmt.Sprintf("%q is a %s image, not %s", d.Path, want, format))
		}
		format = want
		flags := os.O_RDONLY
		if d.Writable {
			flags = os.O_RDWR
		}
		f, err = os.OpenFile(resolved, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return hypervisor.Disk{}, denied(unwrapPathError(err))
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			f.Close()
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q is not a regular file", d.Path))
		}
	} else {
		if insideDir(resolved, root.Dir()) {
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".path", fmt.Sprintf(
				"%q is outside the allowed roots: in cabind's state directory, and not one of the owner's disk images", d.Path))
		}
		if format == "" {
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".image_type", fmt.Sprintf("%q: say raw or qcow2; cabin never probes a format", d.Path))
		}
		f, err = diskimage.OpenImageAs(c, resolved, d.Writable)
		if errors.Is(err, caller.ErrNotRegular) {
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q is a directory or another file that is not a regular one, not an image", d.Path))
		}
		if err != nil {
			return hypervisor.Disk{}, denied(err)
		}
	}
	if format == hypervisor.DiskQcow2 {
		if err := diskimage.CheckQcow2(f); err != nil {
			f.Close()
			return hypervisor.Disk{}, errdefs.InvalidArgument(field+".path", fmt.Sprintf("%q: %v", d.Path, err))
		}
	}
	return hypervisor.Disk{Path: resolved, File: f, Format: format, ReadOnly: !d.Writable}, nil
}

// openShare opens one share's folder.
func openShare(root statedir.Root, c *caller.Caller, field string, sh Share) (*os.File, error) {
	bad := func(why string) error {
		return errdefs.InvalidArgument(field+".host_path", fmt.Sprintf("%q %s", sh.HostDir, why))
	}
	resolved, err := filepath.EvalSymlinks(sh.HostDir)
	if err != nil {
		if c.Trusted() {
			return nil, bad(fmt.Sprintf("cannot be shared: %v", unwrapPathError(err)))
		}
		return nil, bad("is no directory the caller may " + access(!sh.ReadOnly))
	}
	if resolved != sh.HostDir {
		return nil, bad("goes through a symbolic link; give the folder's real path")
	}
	if insideDir(resolved, root.Dir()) || insideDir(root.Dir(), resolved) {
		return nil, bad("is outside the allowed roots: cabind's state directory is not shared")
	}
	f, err := diskimage.OpenDirAs(c, resolved, !sh.ReadOnly)
	if err != nil {
		if c.Trusted() {
			return nil, bad(fmt.Sprintf("cannot be shared: %v", unwrapPathError(err)))
		}
		return nil, bad("is no directory the caller may " + access(!sh.ReadOnly))
	}
	return f, nil
}

func access(write bool) string {
	if write {
		return "read and write"
	}
	return "read"
}

// insideDir tells whether path is dir or below it (both clean).
func insideDir(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}
