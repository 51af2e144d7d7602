package kata

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Volumes: their usage, growing one, resizing a tmpfs storage.

// VolumeUsage is a volume's usage in one unit, as Kata's agent reports it:
// available is what is free (f_bfree, not f_bavail), used the rest.
type VolumeUsage struct {
	Available, Total, Used uint64
}

// VolumeStats are a volume's bytes and inodes.
type VolumeStats struct {
	Bytes, Inodes VolumeUsage
}

// VolumeStats reads the usage of the filesystem holding path.
func (s *Sandbox) VolumeStats(ctx context.Context, path string) (VolumeStats, error) {
	const field = "volume_guest_path"
	if err := checkAbsClean(field, path); err != nil {
		return VolumeStats{}, err
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return VolumeStats{}, errdefs.Errorf(errdefs.ErrNotFound, "%s %s: %w", field, path, err)
		}
		return VolumeStats{}, fmt.Errorf("%s %s: %w", field, path, err)
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return VolumeStats{}, fmt.Errorf("%s %s: statfs: %w", field, path, err)
	}
	bsize := uint64(st.Bsize)
	total, free := st.Blocks*bsize, st.Bfree*bsize
	return VolumeStats{
		Bytes:  VolumeUsage{Total: total, Available: free, Used: total - free},
		Inodes: VolumeUsage{Total: st.Files, Available: st.Ffree, Used: st.Files - st.Ffree},
	}, nil
}

// growable are the filesystems ResizeVolume grows, with resize2fs.
var growable = []string{"ext2", "ext3", "ext4"}

// ResizeVolume grows the filesystem mounted at path to size bytes, or to
// its whole device for 0. The host grows the device first. It grows
// online and never shrinks: ext4 cannot shrink mounted.
func (s *Sandbox) ResizeVolume(ctx context.Context, path string, size uint64) error {
	const field = "volume_guest_path"
	if err := checkAbsClean(field, path); err != nil {
		return err
	}
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	if len(ms) == 0 {
		return errdefs.Errorf(errdefs.ErrNotFound, "%s %s: nothing is mounted there", field, path)
	}
	m := ms[len(ms)-1]
	if !slices.Contains(growable, m.FSType) {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s %s: a %s filesystem; only %s grow here (resize2fs)", field, path, m.FSType, strings.Join(growable, ", "))
	}
	dev, err := blockDeviceAt(m.Source, uint64(unix.Mkdev(uint32(m.Major), uint32(m.Minor))))
	if err != nil {
		return fmt.Errorf("%s %s: %w", field, path, err)
	}
	devSize, err := blockSize(dev)
	if err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("%s %s: statfs: %w", field, path, err)
	}
	current := st.Blocks * uint64(st.Bsize)
	switch {
	case size > devSize:
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "size: %d bytes is beyond the device %s (%d bytes): grow the device first", size, dev, devSize)
	case size != 0 && size < current:
		return errdefs.InvalidArgument("size", fmt.Sprintf("%d bytes is below the filesystem's %d: a mounted filesystem only grows", size, current))
	}
	args := []string{dev}
	if size != 0 {
		args = append(args, strconv.FormatUint(size>>10, 10)+"K")
	}
	out, err := s.tool("resize2fs", args...)
	if err != nil {
		return fmt.Errorf("%s %s: %w", field, path, err)
	}
	s.log.Info("volume grown", "path", path, "device", dev, "size", size, "output", out)
	return nil
}

// blockDeviceAt finds the block device node of a mount: its source when
// that is the device, else /dev/block/MAJ:MIN.
func blockDeviceAt(source string, rdev uint64) (string, error) {
	for _, p := range []string{source, fmt.Sprintf("/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))} {
		var st unix.Stat_t
		if strings.HasPrefix(p, "/dev/") && unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev {
			return p, nil
		}
	}
	return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "not on a block device (source %q)", source)
}

// blockSize is the size in bytes of the block device at path.
func blockSize(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	defer unix.Close(fd)
	n, err := ioctlSize(fd)
	if err != nil {
		return 0, fmt.Errorf("%s: size: %w", path, err)
	}
	return n, nil
}

// tool runs the program name from PATH to its end, through the reaper,
// and returns its output (the start of it); an exit other than 0 is an
// error with that output. A program the image lacks is
// FailedPrecondition naming it.
func (s *Sandbox) tool(name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is not in this guest image: %w", name, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = w, w
	_, exits, err := s.cfg.Reaper.StartCmd(cmd)
	w.Close()
	if err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	b, _ := io.ReadAll(io.LimitReader(r, maxRuntimeOutput))
	io.Copy(io.Discard, r)
	out := strings.TrimSpace(string(b))
	if exit := <-exits; exit.Code != 0 || exit.Signal != 0 {
		return out, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), exit, lastLine(b))
	}
	return out, nil
}

// UpdateEphemeralMounts remounts tmpfs storages the sandbox holds with
// new options (a size, say), as Kata's agent does when a pod's limits
// change. All are checked before any is remounted; "remount" among the
// options is implied.
func (s *Sandbox) UpdateEphemeralMounts(ctx context.Context, list []Storage) error {
	type change struct {
		point string
		spec  mountSpec
		opts  []string
	}
	var changes []change
	s.mounts.mu.Lock()
	defer s.mounts.mu.Unlock()
	for i, st := range list {
		f := fmt.Sprintf("storages[%d]", i)
		if st.Driver != DriverEphemeral {
			return errdefs.InvalidArgument(f+".driver", fmt.Sprintf("%q: only ephemeral storages are updated", st.Driver))
		}
		st.Options = slices.DeleteFunc(slices.Clone(st.Options), func(o string) bool { return o == "remount" })
		spec, err := st.spec(f)
		if err != nil {
			return err
		}
		if err := checkMountPoint(f+".mount_point", st.MountPoint, s.mounts.reserved); err != nil {
			return err
		}
		mt := s.mounts.byPoint[st.MountPoint]
		if mt == nil || mt.storage.Driver != DriverEphemeral {
			return errdefs.Errorf(errdefs.ErrNotFound, "%s.mount_point: %s: no ephemeral storage is mounted there", f, st.MountPoint)
		}
		changes = append(changes, change{st.MountPoint, spec, st.Options})
	}
	for _, c := range changes {
		fd, _, err := openDir("mount_point", c.point, false)
		if err != nil {
			return err
		}
		// The flags it was mounted with stay; the new ones add to them.
		c.spec.flags |= s.mounts.byPoint[c.point].spec.flags
		err = unix.Mount("", procPath(fd), "tmpfs", unix.MS_REMOUNT|c.spec.flags, c.spec.data)
		unix.Close(fd)
		if err != nil {
			st := s.mounts.byPoint[c.point].storage
			return mountError("storages", st, err)
		}
		mt := s.mounts.byPoint[c.point]
		mt.storage.Options, mt.spec = c.opts, c.spec
		s.log.Info("ephemeral storage updated", "mount_point", c.point, "options", c.spec.data)
	}
	return nil
}

// RemoveStaleVirtiofsShareMounts has nothing to do in cabin: upstream
// stats the virtio-fs mounts below its share directory so that virtiofsd
// drops the file descriptors it holds for files gone on the host; cabin
// shares with 9p, whose client keeps no such references on the host
// (cache=none), and has no virtio-fs mounts.
func (s *Sandbox) RemoveStaleVirtiofsShareMounts(ctx context.Context) error {
	return nil
}
