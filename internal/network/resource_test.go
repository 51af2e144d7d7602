package network

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

func TestDefaultMode(t *testing.T) {
	const why = "cabind lacks CAP_NET_ADMIN (run it as root)"
	for _, c := range []struct {
		setting, noTaps, want string
		err                   error
	}{
		{"auto", "", "tap", nil},
		{"", "", "tap", nil},
		{"auto", why, "user", nil},
		{"tap", "", "tap", nil},
		{"tap", why, "", errdefs.ErrFailedPrecondition},
		{"user", "", "user", nil},
		{"user", why, "user", nil},
		{"none", why, "none", nil},
		{"bridge", "", "", errdefs.ErrInvalidArgument},
	} {
		got, err := defaultMode(c.setting, c.noTaps)
		if got != c.want || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("defaultMode(%q, %q) = %q, %v; want %q, %v", c.setting, c.noTaps, got, err, c.want, c.err)
		}
		if c.err == errdefs.ErrFailedPrecondition && !strings.Contains(err.Error(), why) {
			t.Errorf("%v does not say why", err)
		}
	}
}

// testVM is the VM name as the resource sees it, in a state dir of the
// test's.
func testVM(t *testing.T, root statedir.Root, name, network string) resource.VM {
	return resource.VM{
		Name: name, Dir: root.VM(statedir.VMID("", name)), Network: network,
		Log: slog.New(slog.NewTextHandler(tWriter{t}, nil)),
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testRoot(t *testing.T) statedir.Root {
	root, err := statedir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// noTapResource is the resource of a cabind that cannot make taps.
func noTapResource(t *testing.T, root statedir.Root) *Resource {
	a, err := openAllocator(DefaultPool, root.NetworkAllocations())
	if err != nil {
		t.Fatal(err)
	}
	return &Resource{mode: vmm.NetworkUser, noTaps: "cabind lacks CAP_NET_ADMIN (run it as root)",
		pool: DefaultPool, alloc: a, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// A VM on the user-mode network gets a NIC without a tap, and the
// addresses QEMU's slirp gives; one with none gets no NIC. Both are taken
// back as they were.
func TestUserAndNone(t *testing.T) {
	root := testRoot(t)
	r := noTapResource(t, root)
	ctx := context.Background()

	vm := testVM(t, root, "u", "")
	var cfg hypervisor.Config
	h, err := r.Prepare(ctx, vm, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := statedir.VMID("", "u")
	if len(cfg.NICs) != 1 || cfg.NICs[0].Tap != "" || cfg.NICs[0].MAC.String() != macOf(id).String() {
		t.Fatalf("NICs %+v, want one on the user-mode network with the VM's MAC", cfg.NICs)
	}
	want := vmm.GuestNetwork{Address: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS: vmm.DNS{Nameservers: []string{"10.0.2.3"}}}
	n, ok := h.(vmm.Networked)
	if !ok || !reflect.DeepEqual(n.GuestNetwork(), want) {
		t.Fatalf("hold %#v: want a network of %+v", h, want)
	}
	adopted, err := r.Adopt(ctx, vm, h.State())
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := adopted.(vmm.Networked); !ok || !reflect.DeepEqual(n.GuestNetwork(), want) || string(adopted.State()) != string(h.State()) {
		t.Errorf("adopted %#v, state %s; want what was prepared, %s", adopted, adopted.State(), h.State())
	}

	cfg = hypervisor.Config{}
	h, err = r.Prepare(ctx, testVM(t, root, "n", vmm.NetworkNone), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.(vmm.Networked); ok || len(cfg.NICs) != 0 {
		t.Errorf("none: hold %#v, NICs %+v; want no network", h, cfg.NICs)
	}
	for _, st := range []json.RawMessage{h.State(), nil} {
		a, err := r.Adopt(ctx, vm, st)
		if _, ok := a.(vmm.Networked); err != nil || ok {
			t.Errorf("adopt %s: %#v, %v; want no network", st, a, err)
		}
	}
	if _, err := r.Adopt(ctx, vm, json.RawMessage(`{"mode":"bridge"}`)); err == nil {
		t.Error("an unknown mode was adopted")
	}
}

// Where cabind cannot make taps, a VM asking for one is refused, saying
// why.
func TestTapRefusedWithoutTaps(t *testing.T) {
	root := testRoot(t)
	r := noTapResource(t, root)
	var cfg hypervisor.Config
	_, err := r.Prepare(context.Background(), testVM(t, root, "t", vmm.NetworkTap), &cfg)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("Prepare: %v, want a failed precondition saying why", err)
	}
	if len(cfg.NICs) != 0 || len(r.alloc.list()) != 0 {
		t.Errorf("a refused tap left NICs %+v, subnets %v", cfg.NICs, r.alloc.list())
	}
}
