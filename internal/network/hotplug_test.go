package network

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/network/netnstest"
	"github.com/cabinvm/cabin/internal/statedir"
)

// The taps of hot-plugged NICs: made up and without an address (a stale
// one made anew), removed by name only if of their form; a caller's own
// tap is accepted only if it is a tap, not cabind's, and, for a user, its
// own.
func TestHotplugTaps(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	root := testRoot(t)
	r := newTapResource(t, root, testLog(t))
	vm := testVM(t, root, "a", "")
	id := statedir.VMID("", "a")
	name, err := r.MakeHotplugTap(vm, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := "cbh" + id[:10] + "02"; name != want {
		t.Errorf("tap %q, want %q", name, want)
	}
	if addrs, up := tapAddrs(t, name); len(addrs) != 0 || !up {
		t.Errorf("tap %s: addresses %v, up %v; want none, up", name, addrs, up)
	}
	// Again (a stale one of an earlier run): made anew.
	if again, err := r.MakeHotplugTap(vm, 2); err != nil || again != name {
		t.Errorf("again: %q, %v", again, err)
	}
	if err := r.RemoveHotplugTap(name); err != nil {
		t.Fatal(err)
	}
	assertNoTap(t, name)
	if err := r.RemoveHotplugTap(name); err != nil {
		t.Errorf("remove of a tap gone: %v", err)
	}
	if err := r.RemoveHotplugTap("eth0"); err == nil {
		t.Error("removed a tap not of a hot-plugged nic's form")
	}

	// Callers' taps.
	mine := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "usertap"}, Mode: netlink.TUNTAP_MODE_TAP, Owner: 1000}
	if err := netlink.LinkAdd(mine); err != nil {
		t.Fatal(err)
	}
	tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "usertun"}, Mode: netlink.TUNTAP_MODE_TUN}
	if err := netlink.LinkAdd(tun); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	own, err := r.MakeHotplugTap(vm, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		c    *caller.Caller
		want error
	}{
		{"usertap", nil, nil},
		{"usertap", &caller.Caller{UID: 1000}, nil},
		{"usertap", &caller.Caller{UID: 1001}, errdefs.ErrPermissionDenied},
		{"usertun", nil, errdefs.ErrInvalidArgument},
		{"br0", nil, errdefs.ErrInvalidArgument},
		{"nothere", nil, errdefs.ErrNotFound},
		{own, nil, errdefs.ErrPermissionDenied},
		{"cbn" + id[:12], nil, errdefs.ErrPermissionDenied},
	} {
		err := r.CheckTap(c.name, c.c)
		if (c.want == nil && err != nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s by %+v: %v, want %v", c.name, c.c, err, c.want)
		}
	}
}
