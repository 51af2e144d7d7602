// Package netconftest gives tests network namespaces of their own, with
// veth links to play the VM's cards, so that tests of the guest's network
// calls act on real links and never on the host's.
package netconftest

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is a network namespace a test made; it goes with the test.
type Netns struct {
	// Path names it for netconf.Config.Netns while the test runs.
	Path string
	h    netns.NsHandle
	// peers holds the far ends of the veth links: the host's side.
	peers netns.NsHandle
}

// New makes a network namespace for t, skipping t where that is not
// allowed (not root, no CLONE_NEWNET).
func New(t testing.TB) *Netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	h, err := newNetns()
	if err != nil {
		t.Skipf("cannot make a network namespace: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	peers, err := newNetns()
	if err != nil {
		t.Fatalf("second network namespace: %v", err)
	}
	t.Cleanup(func() { peers.Close() })
	return &Netns{Path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h)), h: h, peers: peers}
}

// newNetns makes a network namespace and returns a handle on it.
func newNetns() (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, and
		// with it the last trace of the new namespace in this process
		// but the handle.
		runtime.LockOSThread()
		h, err := netns.New()
		ch <- result{h, err}
	}()
	r := <-ch
	return r.h, r.err
}

// Do runs fn in the namespace, on a thread of its own.
func (ns *Netns) Do(t testing.TB, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.h); err != nil {
			errc <- fmt.Errorf("enter the test's namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// Veth adds a veth link called name with the MAC address mac, up, whose
// peer (name+"p", up too, so that name has a carrier) is in a namespace
// of its own, as a VM's card has the host at its other end.
func (ns *Netns) Veth(t testing.TB, name string, mac net.HardwareAddr) {
	t.Helper()
	ns.Do(t, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}, PeerName: name + "p",
			PeerNamespace: netlink.NsFd(ns.peers)}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s: %w", name, err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns.peers); err != nil {
			errc <- err
			return
		}
		l, err := netlink.LinkByName(name + "p")
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("peer of %s: %v", name, err)
	}
	ns.settle(t, name)
}

// settle waits until link name has its carrier and, where IPv6 is on,
// the link-local address (and its route) that the kernel adds when the
// carrier comes, on its own schedule: a test that compares the link
// before and after a call must not see the kernel's change as the
// call's.
func (ns *Netns) settle(t testing.TB, name string) {
	t.Helper()
	v6 := ns.Sysctl(t, "net/ipv6/conf/"+name+"/disable_ipv6") == "0" &&
		ns.Sysctl(t, "net/ipv6/conf/"+name+"/addr_gen_mode") != "1"
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ready bool
		ns.Do(t, func() error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().OperState != netlink.OperUp {
				return nil
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			ready = !v6 || slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.IsLinkLocalUnicast() })
			return nil
		})
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no carrier or no link-local address 10 s after it came up", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Sysctl reads a sysctl (slash-separated below /proc/sys) in the namespace.
func (ns *Netns) Sysctl(t testing.TB, name string) string {
	t.Helper()
	var v string
	ns.Do(t, func() error {
		b, err := os.ReadFile("/proc/sys/" + name)
		v = string(b)
		return err
	})
	if len(v) > 0 && v[len(v)-1] == '\n' {
		v = v[:len(v)-1]
	}
	return v
}
