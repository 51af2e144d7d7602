package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// DialPort on a fake guest link: the "agent" echoes what it is sent,
// and the VM records the dial.
func (l *fakeLink) DialPort(_ context.Context, proto string, port int) (net.Conn, error) {
	l.vm.step(fmt.Sprintf("dial %s %d", proto, port))
	host, guest := net.Pipe()
	go func() {
		defer guest.Close()
		io.Copy(guest, guest)
	}()
	return host, nil
}

func (noLink) DialPort(context.Context, string, int) (net.Conn, error) { return nil, errNoAgent }

// staticNet gives every VM the same network.
type staticNet struct{ n GuestNetwork }

func (staticNet) Name() string { return "network" }

func (s staticNet) Prepare(context.Context, resource.VM, *hypervisor.Config) (resource.Hold, error) {
	return staticHold(s), nil
}

func (s staticNet) Adopt(context.Context, resource.VM, json.RawMessage) (resource.Hold, error) {
	return staticHold(s), nil
}

type staticHold staticNet

func (staticHold) State() json.RawMessage        { return nil }
func (staticHold) Release(context.Context) error { return nil }
func (h staticHold) GuestNetwork() GuestNetwork  { return h.n }

// loopNet is a network the host is on, as it is on a tap: the guest's
// address is the host's loopback, where the test listens as the guest
// would, and the host's route there leaves from the "gateway".
var loopNet = staticNet{GuestNetwork{Address: netip.MustParsePrefix("127.0.0.1/8"), Gateway: netip.MustParseAddr("127.0.0.1")}}

// slirpNet is a network the host is not on, as QEMU's user-mode one: the
// host's route to the guest's address (a documentation address, to which
// the test sends nothing) does not leave from its gateway.
var slirpNet = staticNet{GuestNetwork{Address: netip.MustParsePrefix("203.0.113.15/24"), Gateway: netip.MustParseAddr("203.0.113.2")}}

// roundTrip writes msg on c and reads it back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	go c.Write([]byte(msg))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v; want %q", buf, err, msg)
	}
}

// A VM without a network the host is on is reached through its agent:
// one with none, and one with QEMU's user-mode network.
func TestDialPortOverTheChannel(t *testing.T) {
	for _, c := range []struct {
		name string
		net  []resource.Kind
	}{{"none", nil}, {"user", []resource.Kind{slirpNet}}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.m.opts.Resources = append(e.m.opts.Resources, c.net...)
			events, cancel := watch(e.m)
			defer cancel()
			if _, _, err := e.m.Start(context.Background(), spec("ch")); err != nil {
				t.Fatal(err)
			}
			events.await(t, EventStarted, "ch")
			conn, err := e.m.DialPort(context.Background(), Key{Name: "ch"}, "udp", 53)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			roundTrip(t, conn, "over the channel")
			f := e.launcher.get(e.root.VM(statedir.VMID("", "ch")))
			if steps := strings.Join(f.stepsSoFar(), "|"); !strings.Contains(steps, "dial udp 53") {
				t.Errorf("steps %q: the agent was not asked", steps)
			}
		})
	}
}

// A VM with a network of its own is reached at its address, not through
// its agent.
func TestDialPortOverItsNetwork(t *testing.T) {
	e := newEnv(t)
	e.m.opts.Resources = append(e.m.opts.Resources, loopNet)
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("tap")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "tap")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := e.m.DialPort(context.Background(), Key{Name: "tap"}, "tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "over the tap")
	f := e.launcher.get(e.root.VM(statedir.VMID("", "tap")))
	if steps := strings.Join(f.stepsSoFar(), "|"); strings.Contains(steps, "dial ") {
		t.Errorf("steps %q: the agent was asked", steps)
	}
}

func TestDialPortRefusals(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("up")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "up")
	for _, c := range []struct {
		name  string
		key   Key
		proto string
		port  int
		want  error
	}{
		{"no such vm", Key{Name: "ghost"}, "tcp", 80, errdefs.ErrNotFound},
		{"port 0", Key{Name: "up"}, "tcp", 0, errdefs.ErrInvalidArgument},
		{"port 65536", Key{Name: "up"}, "tcp", 65536, errdefs.ErrInvalidArgument},
		{"sctp", Key{Name: "up"}, "sctp", 80, errdefs.ErrInvalidArgument},
	} {
		if _, err := e.m.DialPort(context.Background(), c.key, c.proto, c.port); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if err := e.m.Stop(context.Background(), Key{Name: "up"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.DialPort(context.Background(), Key{Name: "up"}, "tcp", 80); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a stopped VM: %v, want not found", err)
	}
}

// Hold finds a running VM's hold of a type, and says why it cannot.
func TestHold(t *testing.T) {
	e := newEnv(t)
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec("h")); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, "h")
	h, err := Hold[*trackerHold](context.Background(), e.m, Key{Name: "h"})
	if err != nil || h.vm != "h" {
		t.Fatalf("Hold: %+v, %v", h, err)
	}
	if _, err := Hold[Networked](context.Background(), e.m, Key{Name: "h"}); !errors.Is(err, errdefs.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "vmm.Networked") {
		t.Errorf("a hold it has not: %v, want a failed precondition naming the type", err)
	}
	if _, err := Hold[*trackerHold](context.Background(), e.m, Key{Name: "ghost"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("no such vm: %v, want not found", err)
	}
	if err := e.m.Stop(context.Background(), Key{Name: "h"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Hold[*trackerHold](context.Background(), e.m, Key{Name: "h"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a stopped VM: %v, want not found", err)
	}
}
