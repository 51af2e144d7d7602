package kata

import (
	"context"
	"fmt"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Device is a disk the host plugged for a container (Kata's Device): the
// spec's linux.devices entry at ContainerPath names it by the host's
// numbers, which the guest's replace.
type Device struct {
	ID            string
	Type          string
	VMPath        string
	ContainerPath string
	Options       []string
}

// deviceTypes are the device handlers: virtio-blk disks.
var deviceTypes = []string{DriverBlk, DriverVirtioBlk, DriverMmioBlk}

// Devices finds each device's node in the guest, waiting for it to
// appear, and rewrites spec for it as Kata's agent does: the
// linux.devices entry whose path is the device's container_path gets the
// guest's major and minor numbers, and so do the device cgroup rules that
// named the host's. A device without a container_path is only waited
// for. spec is changed only when all are found.
func (s *Sandbox) Devices(ctx context.Context, field string, devs []Device, spec *specs.Spec) error {
	type update struct {
		index                  int
		hostMajor, hostMinor   int64
		guestMajor, guestMinor int64
	}
	var updates []update
	for i, d := range devs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if len(d.Options) > 0 {
			return errdefs.InvalidArgument(f+".options", "not supported")
		}
		source := d.VMPath
		switch d.Type {
		case DriverBlk, DriverVirtioBlk:
			if source == "" {
				source = d.ID
			}
		case DriverMmioBlk:
			if !strings.HasPrefix(source, "/dev/") {
				return errdefs.InvalidArgument(f+".vm_path", fmt.Sprintf("%q: a %s device names its node, /dev/vdX", source, d.Type))
			}
		default:
			return errdefs.InvalidArgument(f+".type", fmt.Sprintf("%q is not supported (%s)", d.Type, strings.Join(deviceTypes, ", ")))
		}
		if strings.HasPrefix(source, "/dev/") {
			if err := checkAbsClean(f+".vm_path", source); err != nil {
				return err
			}
		} else if _, err := parsePCIPath(f+".id", source); err != nil {
			return err
		}
		idx := -1
		if d.ContainerPath != "" {
			if spec.Linux != nil {
				for j, sd := range spec.Linux.Devices {
					if sd.Path == d.ContainerPath {
						idx = j
					}
				}
			}
			if idx < 0 {
				return errdefs.InvalidArgument(f+".container_path", fmt.Sprintf("%q is not among the spec's linux.devices", d.ContainerPath))
			}
		}
		if err := s.cfg.WaitModules(ctx); err != nil {
			return err
		}
		node, err := findDisk(ctx, f, source)
		if err != nil {
			return err
		}
		if idx < 0 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(node, &st); err != nil {
			return fmt.Errorf("%s: %s: %w", f, node, err)
		}
		sd := spec.Linux.Devices[idx]
		updates = append(updates, update{idx, sd.Major, sd.Minor, int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))})
	}
	for _, u := range updates {
		sd := &spec.Linux.Devices[u.index]
		sd.Type, sd.Major, sd.Minor = "b", u.guestMajor, u.guestMinor
		if spec.Linux.Resources == nil {
			continue
		}
		for k, r := range spec.Linux.Resources.Devices {
			if r.Type == "b" && r.Major != nil && r.Minor != nil && *r.Major == u.hostMajor && *r.Minor == u.hostMinor {
				spec.Linux.Resources.Devices[k].Major, spec.Linux.Resources.Devices[k].Minor = ptr(u.guestMajor), ptr(u.guestMinor)
			}
		}
	}
	return nil
}
