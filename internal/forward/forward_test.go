package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
	"github.com/cabinvm/cabin/internal/vmm"
)

// guest plays a VM's guest: its "ports" are servers on the host's
// loopback, and the dialer connects to them by guest port, as the
// manager would over a tap. It counts the dials.
type guest struct {
	mu    sync.Mutex
	ports map[string]string // "tcp/80" → the server's address
	dials atomic.Int32
	// fail, when set, is what every dial fails with.
	fail error
}

func newGuest() *guest { return &guest{ports: map[string]string{}} }

func (g *guest) dial(ctx context.Context, key vmm.Key, proto string, port int) (net.Conn, error) {
	g.dials.Add(1)
	if g.fail != nil {
		return nil, g.fail
	}
	g.mu.Lock()
	addr, ok := g.ports[fmt.Sprintf("%s/%d", proto, port)]
	g.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("guest %s: %s port %d: connection refused", key, proto, port)
	}
	var d net.Dialer
	return d.DialContext(ctx, proto, addr)
}

// serveTCP runs handle for each connection to the guest's TCP port.
func (g *guest) serveTCP(t *testing.T, port int, handle func(net.Conn)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	g.mu.Lock()
	g.ports[fmt.Sprintf("tcp/%d", port)] = ln.Addr().String()
	g.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// echo echoes until the client's half-close, then closes.
func echo(c net.Conn) { io.Copy(c, c) }

// serveUDP answers each datagram to the guest's UDP port with the
// address it came from and the datagram.
func (g *guest) serveUDP(t *testing.T, port int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	g.mu.Lock()
	g.ports[fmt.Sprintf("udp/%d", port)] = pc.LocalAddr().String()
	g.mu.Unlock()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.String()+" "+string(buf[:n])), from)
		}
	}()
}

type fixture struct {
	t     *testing.T
	guest *guest
	kind  *Resource
	vm    resource.VM
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := statedirtest.New(t)
	dir := root.VM(statedir.VMID("", "fwd"))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	g := newGuest()
	return &fixture{
		t: t, guest: g,
		kind: &Resource{Dial: g.dial, UDPIdle: 200 * time.Millisecond},
		vm:   resource.VM{Name: "fwd", Dir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
	}
}

// prepare gives the VM its forwards hold, released when the test ends.
func (f *fixture) prepare() *Set {
	f.t.Helper()
	h, err := f.kind.Prepare(context.Background(), f.vm, &hypervisor.Config{})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { h.Release(context.Background()) })
	return h.(*Set)
}

// root is the caller root; user a caller that is not.
var (
	root = &caller.Caller{UID: 0}
	user = &caller.Caller{UID: 1000}
)

// freePort is a port nothing listens on for proto on 127.0.0.1 now.
func freePort(t *testing.T, proto string) int {
	t.Helper()
	if proto == UDP {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (f *fixture) add(s *Set, fw Forward) Forward {
	f.t.Helper()
	got, err := s.Add(context.Background(), fw, user)
	if err != nil {
		f.t.Fatalf("add %v: %v", fw, err)
	}
	return got
}

func dialHost(t *testing.T, proto string, port int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout(proto, fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestTCPEcho(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 80, echo)
	s := f.prepare()
	port := freePort(t, TCP)
	got := f.add(s, Forward{HostPort: port, GuestPort: 80})
	if want := (Forward{Proto: TCP, HostAddr: DefaultAddress, HostPort: port, GuestPort: 80}); got != want {
		t.Errorf("added %+v, want the defaults filled in: %+v", got, want)
	}
	// Several connections at once, each its own way to the guest, with
	// more than a chunk each way.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			c := dialHost(t, TCP, port)
			msg := bytes.Repeat([]byte{byte('a' + i)}, 200<<10)
			go func() {
				c.Write(msg)
				c.(*net.TCPConn).CloseWrite()
			}()
			back, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(back, msg) {
				t.Errorf("connection %d: %d bytes back (%v), want the %d sent", i, len(back), err, len(msg))
			}
		})
	}
	wg.Wait()
	if n := f.guest.dials.Load(); n != 4 {
		t.Errorf("%d dials to the guest for 4 connections", n)
	}
}

// Each side's half-close reaches the other, and the other can still
// send: the guest reads the client's request to its end, then answers.
func TestTCPHalfClose(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 7, func(c net.Conn) {
		req, _ := io.ReadAll(c)
		c.Write([]byte("got " + string(req)))
	})
	// And the other way round: the guest says all it has and
	// half-closes, then reads what the client sends after.
	gotLate := make(chan string, 1)
	f.guest.serveTCP(t, 8, func(c net.Conn) {
		c.Write([]byte("hello"))
		c.(*net.TCPConn).CloseWrite()
		late, _ := io.ReadAll(c)
		gotLate <- string(late)
	})
	s := f.prepare()
	p7, p8 := freePort(t, TCP), freePort(t, TCP)
	f.add(s, Forward{HostPort: p7, GuestPort: 7})
	f.add(s, Forward{HostPort: p8, GuestPort: 8})

	c := dialHost(t, TCP, p7)
	c.Write([]byte("request"))
	c.(*net.TCPConn).CloseWrite()
	if back, err := io.ReadAll(c); err != nil || string(back) != "got request" {
		t.Errorf("client half-closed: %q, %v; want the answer, then EOF", back, err)
	}

	c = dialHost(t, TCP, p8)
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if n, err := c.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the guest's half-close: %d, %v; want EOF", n, err)
	}
	c.Write([]byte("still here"))
	c.(*net.TCPConn).CloseWrite()
	select {
	case late := <-gotLate:
		if late != "still here" {
			t.Errorf("the guest read %q after its half-close, want what the client sent", late)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client's bytes after the guest's half-close did not arrive")
	}
}

// A client whose guest port cannot be reached is reset, and the forward
// goes on.
func TestTCPGuestUnreachable(t *testing.T) {
	f := newFixture(t)
	s := f.prepare()
	port := freePort(t, TCP)
	f.add(s, Forward{HostPort: port, GuestPort: 9})
	// The reset may come before the connect returns, on the loopback.
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read from a forward whose guest port is closed: %v, want a reset", err)
		}
		c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connect to a forward whose guest port is closed: %v, want a reset", err)
	}
	f.guest.serveTCP(t, 9, echo)
	c := dialHost(t, TCP, port)
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("once the guest listens: %v", err)
	}
}

// Each UDP client is a flow of its own, its replies going back to it; an
// idle flow ends, and the client's next datagram starts another.
func TestUDP(t *testing.T) {
	f := newFixture(t)
	f.guest.serveUDP(t, 53)
	s := f.prepare()
	port := freePort(t, UDP)
	f.add(s, Forward{Proto: UDP, HostPort: port, GuestPort: 53})

	ask := func(c net.Conn, msg string) string {
		t.Helper()
		for range 50 {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			buf := make([]byte, 65535)
			n, err := c.Read(buf)
			if err == nil {
				from, got, _ := strings.Cut(string(buf[:n]), " ")
				if got != msg {
					t.Fatalf("answer %q to %q", got, msg)
				}
				return from
			}
		}
		t.Fatalf("no answer to %q", msg)
		return ""
	}
	a, b := dialHost(t, UDP, port), dialHost(t, UDP, port)
	fromA, fromB := ask(a, "one"), ask(b, "two")
	if fromA == fromB {
		t.Errorf("two clients reached the guest from one address, %s: their replies could cross", fromA)
	}
	if again := ask(a, "three"); again != fromA {
		t.Errorf("a client's second datagram came from %s, its first from %s: want one flow", again, fromA)
	}
	// Large datagrams travel whole; an empty one too.
	ask(a, strings.Repeat("x", 60000))
	ask(a, "")
	dials := f.guest.dials.Load()
	if dials != 2 {
		t.Errorf("%d dials for two clients", dials)
	}
	time.Sleep(600 * time.Millisecond)
	ask(a, "after a pause")
	if n := f.guest.dials.Load(); n != dials+1 {
		t.Errorf("%d dials after an idle time, want %d: a new flow", n, dials+1)
	}
}

func TestBadForwards(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 80, echo)
	s := f.prepare()
	port := freePort(t, TCP)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	f.add(s, Forward{HostPort: port, GuestPort: 80})
	for _, c := range []struct {
		name  string
		fw    Forward
		by    *caller.Caller
		want  error
		words []string
	}{
		{"host port 0", Forward{HostPort: 0, GuestPort: 80}, user, errdefs.ErrInvalidArgument, []string{"host_port", "0"}},
		{"host port 65536", Forward{HostPort: 65536, GuestPort: 80}, user, errdefs.ErrInvalidArgument, []string{"host_port", "65536"}},
		{"guest port 0", Forward{HostPort: 9999, GuestPort: 0}, user, errdefs.ErrInvalidArgument, []string{"guest_port"}},
		{"guest port 65536", Forward{HostPort: 9999, GuestPort: 65536}, user, errdefs.ErrInvalidArgument, []string{"guest_port", "65536"}},
		{"sctp", Forward{Proto: "sctp", HostPort: 9999, GuestPort: 80}, user, errdefs.ErrInvalidArgument, []string{"protocol"}},
		{"privileged port", Forward{HostPort: 80, GuestPort: 80}, user, errdefs.ErrPermissionDenied, []string{"host_port 80", "1024"}},
		{"port in use", Forward{HostPort: takenPort, GuestPort: 80}, root, errdefs.ErrFailedPrecondition, []string{fmt.Sprint(takenPort), "in use"}},
		{"twice", Forward{HostPort: port, GuestPort: 81}, user, errdefs.ErrAlreadyExists, []string{fmt.Sprint(port), "already"}},
		{"not a host address", Forward{HostAddr: netip.MustParseAddr("192.0.2.1"), HostPort: 9999, GuestPort: 80}, user,
			errdefs.ErrInvalidArgument, []string{"host_address", "192.0.2.1"}},
	} {
		_, err := s.Add(context.Background(), c.fw, c.by)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
			continue
		}
		for _, w := range c.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
	}
	// The same port over the other protocol is another forward.
	if _, err := s.Add(context.Background(), Forward{Proto: UDP, HostPort: port, GuestPort: 80}, user); err != nil {
		// The UDP port may be someone else's: only that refusal is fine.
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("udp on a tcp forward's port: %v", err)
		}
	}
	if got := s.List(); len(got) < 1 || got[0].Forward != (Forward{Proto: TCP, HostAddr: DefaultAddress, HostPort: port, GuestPort: 80}) {
		t.Errorf("refusals changed the forwards: %+v", got)
	}
}

func TestRemove(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 80, echo)
	s := f.prepare()
	port := freePort(t, TCP)
	f.add(s, Forward{HostPort: port, GuestPort: 80})
	c := dialHost(t, TCP, port)
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))

	if _, err := s.Remove(context.Background(), TCP, netip.Addr{}, port+1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove one that is not there: %v, want not found", err)
	}
	if _, err := s.Remove(context.Background(), UDP, netip.Addr{}, port); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("remove the udp one of a tcp port: %v, want not found", err)
	}
	if _, err := s.Remove(context.Background(), TCP, netip.Addr{}, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("remove port 0: %v, want invalid", err)
	}
	got, err := s.Remove(context.Background(), TCP, netip.Addr{}, port)
	if err != nil || got.GuestPort != 80 {
		t.Fatalf("remove: %+v, %v", got, err)
	}
	// Its connections end with it, and the port is free again.
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection of a removed forward still reads")
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("the port of a removed forward: %v", err)
	}
	ln.Close()
	if l := s.List(); len(l) != 0 {
		t.Errorf("listed after removal: %+v", l)
	}
	if fwds, err := readFile(f.vm.Dir); err != nil || len(fwds) != 0 {
		t.Errorf("file after removal: %+v, %v", fwds, err)
	}
}

// The same port on two addresses: removing it needs the address.
func TestRemoveAmbiguous(t *testing.T) {
	f := newFixture(t)
	s := f.prepare()
	port := freePort(t, TCP)
	f.add(s, Forward{HostPort: port, GuestPort: 80})
	if _, err := s.Add(context.Background(), Forward{HostAddr: netip.MustParseAddr("127.0.0.2"), HostPort: port, GuestPort: 81}, user); err != nil {
		t.Skipf("no second loopback address to listen on: %v", err)
	}
	if _, err := s.Remove(context.Background(), TCP, netip.Addr{}, port); !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "127.0.0.2") {
		t.Errorf("remove without the address: %v, want invalid naming both", err)
	}
	if got, err := s.Remove(context.Background(), TCP, netip.MustParseAddr("127.0.0.2"), port); err != nil || got.GuestPort != 81 {
		t.Errorf("remove with the address: %+v, %v", got, err)
	}
}

// Forwards outlive cabind: Detach lets go of the listeners and keeps the
// file; Adopt listens again. A port something else took meanwhile is
// kept, with the reason, and can be added again once free.
func TestRestoreAfterRestart(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 80, echo)
	f.guest.serveUDP(t, 53)
	h, err := f.kind.Prepare(context.Background(), f.vm, &hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := h.(*Set)
	tcpPort, udpPort, lostPort := freePort(t, TCP), freePort(t, UDP), freePort(t, TCP)
	f.add(s, Forward{HostPort: tcpPort, GuestPort: 80})
	f.add(s, Forward{Proto: UDP, HostPort: udpPort, GuestPort: 53})
	f.add(s, Forward{HostPort: lostPort, GuestPort: 80})
	want := s.List()
	s.Detach()
	if _, err := os.Stat(f.vm.Dir.Forwards()); err != nil {
		t.Fatalf("the forwards file after a detach: %v", err)
	}
	// Meanwhile someone takes one of the ports.
	thief, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", lostPort))
	if err != nil {
		t.Fatal(err)
	}

	h, err = f.kind.Adopt(context.Background(), f.vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	s = h.(*Set)
	t.Cleanup(func() { s.Release(context.Background()) })
	got := s.List()
	if len(got) != len(want) {
		t.Fatalf("restored %+v, want %+v", got, want)
	}
	for i := range got {
		if got[i].Forward != want[i].Forward {
			t.Errorf("restored %+v, want %+v", got[i], want[i])
		}
		if lost := got[i].HostPort == lostPort; lost != (got[i].Problem != "") {
			t.Errorf("restored %+v: want a problem for the stolen port only", got[i])
		}
	}
	c := dialHost(t, TCP, tcpPort)
	c.Write([]byte("back"))
	if buf := make([]byte, 4); func() error { _, err := io.ReadFull(c, buf); return err }() != nil || string(buf) != "back" {
		t.Errorf("a restored tcp forward does not carry: %q", buf)
	}
	u := dialHost(t, UDP, udpPort)
	answered := false
	for range 50 {
		u.Write([]byte("ping"))
		u.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 100)
		if n, err := u.Read(buf); err == nil && strings.HasSuffix(string(buf[:n]), " ping") {
			answered = true
			break
		}
	}
	if !answered {
		t.Error("a restored udp forward does not carry")
	}

	// Adding the lost one again is refused while the port is taken...
	lost := Forward{HostPort: lostPort, GuestPort: 80}
	if _, err := s.Add(context.Background(), lost, user); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("add again while the port is taken: %v", err)
	}
	// ...and takes its place once it is free.
	thief.Close()
	f.add(s, lost)
	for _, st := range s.List() {
		if st.Problem != "" {
			t.Errorf("after adding it again: %+v", st)
		}
	}
}

// Release ends the forwards and their connections, and removes the file;
// a VM prepared again starts with none.
func TestReleaseClosesListeners(t *testing.T) {
	f := newFixture(t)
	f.guest.serveTCP(t, 80, echo)
	s := f.prepare()
	tcpPort, udpPort := freePort(t, TCP), freePort(t, UDP)
	f.add(s, Forward{HostPort: tcpPort, GuestPort: 80})
	f.add(s, Forward{Proto: UDP, HostPort: udpPort, GuestPort: 53})
	c := dialHost(t, TCP, tcpPort)
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	if err := s.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection still reads after release")
	}
	for _, p := range []struct {
		proto string
		port  int
	}{{TCP, tcpPort}, {UDP, udpPort}} {
		addr := fmt.Sprintf("127.0.0.1:%d", p.port)
		var err error
		if p.proto == TCP {
			var ln net.Listener
			if ln, err = net.Listen("tcp", addr); err == nil {
				ln.Close()
			}
		} else {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", addr); err == nil {
				pc.Close()
			}
		}
		if err != nil {
			t.Errorf("%s port %d after release: %v", p.proto, p.port, err)
		}
	}
	if _, err := os.Stat(f.vm.Dir.Forwards()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the forwards file after release: %v", err)
	}
	if _, err := s.Add(context.Background(), Forward{HostPort: tcpPort, GuestPort: 80}, user); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("add after release: %v, want not found", err)
	}
	// A stale file (a run that ended unseen) is no start's forwards.
	if err := writeFile(f.vm.Dir, []Forward{{Proto: TCP, HostAddr: DefaultAddress, HostPort: tcpPort, GuestPort: 80}}); err != nil {
		t.Fatal(err)
	}
	if l := f.prepare().List(); len(l) != 0 {
		t.Errorf("a new run starts with %+v", l)
	}
}

func TestFileIsWrittenAtomicallyAndRead(t *testing.T) {
	f := newFixture(t)
	fwds := []Forward{
		{Proto: TCP, HostAddr: DefaultAddress, HostPort: 8080, GuestPort: 80},
		{Proto: UDP, HostAddr: netip.MustParseAddr("::1"), HostPort: 5353, GuestPort: 53},
	}
	if err := writeFile(f.vm.Dir, fwds); err != nil {
		t.Fatal(err)
	}
	got, err := readFile(f.vm.Dir)
	if err != nil || len(got) != 2 || got[0] != fwds[0] || got[1] != fwds[1] {
		t.Errorf("read back %+v, %v", got, err)
	}
	entries, _ := os.ReadDir(f.vm.Dir.Path())
	for _, e := range entries {
		if e.Name() != "forwards.json" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	os.WriteFile(f.vm.Dir.Forwards(), []byte("{junk"), 0o600)
	if _, err := readFile(f.vm.Dir); err == nil {
		t.Error("junk read as forwards")
	}
	// Adopt survives it: the VM is kept, with no forwards.
	h, err := f.kind.Adopt(context.Background(), f.vm, nil)
	if err != nil || len(h.(*Set).List()) != 0 {
		t.Errorf("adopt over junk: %v", err)
	}
	h.Release(context.Background())
}
