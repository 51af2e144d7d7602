package imageshare

import (
	"context"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
)

type fakeStore struct{ shares int }

func (f *fakeStore) ShareDir() string { return "/var/lib/cabin/images/oci/rootfs" }
func (f *fakeStore) Share() func() {
	f.shares++
	return func() { f.shares-- }
}

// TestResource: every VM gets the store's trees as a read-only share and
// counts as the store's while it lives, adopted or launched.
func TestResource(t *testing.T) {
	ctx := context.Background()
	st := &fakeStore{}
	r := Resource{Store: st}
	var cfg hypervisor.Config
	h, err := r.Prepare(ctx, resource.VM{Name: "a"}, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := hypervisor.Share{Tag: bootcfg.ImagesTag, Path: st.ShareDir(), ReadOnly: true}
	if len(cfg.Shares) != 1 || cfg.Shares[0] != want {
		t.Errorf("shares %+v; want %+v", cfg.Shares, want)
	}
	a, err := r.Adopt(ctx, resource.VM{Name: "b"}, nil)
	if err != nil || st.shares != 2 || h.State() != nil {
		t.Fatalf("Adopt: %v; %d VMs counted", err, st.shares)
	}
	h.Release(ctx)
	a.Release(ctx)
	if st.shares != 0 {
		t.Errorf("%d VMs counted after both released", st.shares)
	}
}
