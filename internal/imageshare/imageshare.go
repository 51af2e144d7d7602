// Package imageshare gives every VM the OCI image store's root
// filesystems as one read-only 9p share (tag bootcfg.ImagesTag), a
// per-VM resource. A microvm takes no device once it runs, and a share
// of the store's whole tree directory lets an image imported while the
// VM runs be used in it at once; containers of an image, in every VM,
// read the one copy through an overlay of their own (docs/decisions.md
// §27).
package imageshare

import (
	"context"
	"encoding/json"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

// Store is what the share needs of the image store (*ociimage.Store).
type Store interface {
	// ShareDir is the directory of the images' trees.
	ShareDir() string
	// Share counts a VM that has ShareDir until release: the trees of
	// images removed meanwhile are kept for it.
	Share() (release func())
}

// Resource shares Store's trees with every VM.
type Resource struct {
	Store Store
}

var _ resource.Kind = Resource{}

// Name is "oci images".
func (Resource) Name() string { return "oci images" }

// Prepare adds the read-only share and counts the VM as the store's.
func (r Resource) Prepare(_ context.Context, _ resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	cfg.Shares = append(cfg.Shares, hypervisor.Share{Tag: bootcfg.ImagesTag, Path: r.Store.ShareDir(), ReadOnly: true})
	return hold{release: r.Store.Share()}, nil
}

// Adopt counts a VM an earlier cabind started: its share is in its
// hypervisor already.
func (r Resource) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return hold{release: r.Store.Share()}, nil
}

type hold struct{ release func() }

func (hold) State() json.RawMessage { return nil }

func (h hold) Release(context.Context) error {
	h.release()
	return nil
}
