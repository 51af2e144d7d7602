package guestimage

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Resource is the guest image as a per-VM resource: a VM that does not
// bring its own kernel boots the image's kernel and initramfs (built on
// first use, and rebuilt when stale: see Builder.Ensure), and every VM gets
// the container root filesystems as a read-only share under
// bootcfg.RootfsTag. The share's directory is in the VM's record
// (hypervisor config shares), which is how Builder.InUse keeps it while the
// VM may run.
type Resource struct {
	Builder *Builder
}

var _ resource.Kind = Resource{}

// Name is "guest image".
func (Resource) Name() string { return "guest image" }

// Prepare sets cfg's kernel and initramfs to the image's when it has none,
// and adds the root filesystems' share. A VM booting a kernel of its own
// may run cabin-agent and containers too, but starts without the share
// rather than fail when the image cannot be had.
func (r Resource) Prepare(ctx context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	progress := func(p Progress) {
		if p.Total == 0 && p.Done == 0 {
			vm.Log.Info("image", "step", p.Step)
		}
	}
	var rootfs string
	if cfg.Kernel == "" && cfg.KernelFile == nil {
		img, err := r.Builder.Ensure(ctx, progress)
		if err != nil {
			return nil, err
		}
		cfg.Kernel, cfg.Initrd, rootfs = img.Kernel, img.Initramfs, img.Rootfs
	} else {
		dir, err := r.Builder.Rootfs(ctx, progress)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("container root filesystems: %w", err)
			}
			vm.Log.Warn("starting without the container root filesystems share", "err", err)
		}
		rootfs = dir
	}
	if rootfs != "" {
		cfg.Shares = append(cfg.Shares, hypervisor.Share{Tag: bootcfg.RootfsTag, Path: rootfs, ReadOnly: true})
	}
	return imageHold{}, nil
}

// Adopt takes nothing back: the share's directory stays while the VM's
// record names it.
func (Resource) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return imageHold{}, nil
}

// imageHold holds nothing that needs releasing: an image generation is
// pruned once no record names it.
type imageHold struct{}

func (imageHold) State() json.RawMessage        { return nil }
func (imageHold) Release(context.Context) error { return nil }
