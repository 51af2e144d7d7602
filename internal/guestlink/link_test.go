package guestlink

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// agent is a guest agent as the link meets it: listening where QEMU would
// for the VM's two ports, serving Maitred on both, and calling the host's
// StartupListener.VmReady on each new session, as cabin-agent does.
type agent struct {
	t        *testing.T
	mu       sync.Mutex
	calls    []string
	sessions []*channel.Session
}

type maitred struct {
	vmtools.UnimplementedMaitredServer
	a *agent
}

func (m maitred) SetTime(_ context.Context, req *vmtools.SetTimeRequest) (*vmtools.EmptyMessage, error) {
	m.a.record("time")
	return &vmtools.EmptyMessage{}, nil
}

func (m maitred) SetTimezone(_ context.Context, req *vmtools.SetTimezoneRequest) (*vmtools.EmptyMessage, error) {
	m.a.record("timezone " + req.GetTimezoneName())
	return &vmtools.EmptyMessage{}, nil
}

func (m maitred) Shutdown(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	m.a.record("shutdown")
	return &vmtools.EmptyMessage{}, nil
}

func (a *agent) record(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, s)
}

func (a *agent) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// dropSessions ends the sessions made so far, as a guest that loses its
// host does; the link is to make a new one.
func (a *agent) dropSessions() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.sessions {
		s.Close()
	}
	a.sessions = nil
}

func startAgent(t *testing.T, dir statedir.VMDir) *agent {
	t.Helper()
	a := &agent{t: t}
	lis, err := net.Listen("unix", dir.AgentSocket())
	if err != nil {
		t.Fatal(err)
	}
	rpc, err := net.Listen("unix", dir.RPCSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close(); rpc.Close(); a.dropSessions() })
	srv := channel.NewServer(discard())
	vmtools.RegisterMaitredServer(srv, maitred{a: a})
	t.Cleanup(srv.Stop)
	go func() {
		for {
			conn, err := rpc.Accept()
			if err != nil {
				return
			}
			go srv.ServeUnary(conn)
		}
	}()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			sess, err := channel.ServerSession(conn, discard())
			if err != nil {
				return
			}
			a.mu.Lock()
			a.sessions = append(a.sessions, sess)
			a.mu.Unlock()
			go srv.Serve(sess)
			cc, err := grpc.NewClient("passthrough:///host",
				grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return sess.Open() }),
				grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Error(err)
				return
			}
			go func() {
				defer cc.Close()
				vmtools.NewStartupListenerClient(cc).VmReady(context.Background(), &vmtools.EmptyMessage{})
			}()
		}
	}()
	return a
}

// startup is the host's StartupListener: it reports who called.
type startup struct {
	vmtools.UnimplementedStartupListenerServer
	ready chan Peer
}

func (s startup) VmReady(ctx context.Context, _ *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	p, _ := peer.FromContext(ctx)
	vm, ok := PeerOf(p.Addr)
	if !ok {
		return nil, errors.New("not from a vm")
	}
	s.ready <- vm
	return &vmtools.EmptyMessage{}, nil
}

// The link connects to the agent, serves it the host's services with the
// VM as the caller, carries the manager's calls, and connects again after
// the session ends, until it is closed.
func TestLink(t *testing.T) {
	dir := statedir.VMDir(t.TempDir())
	a := startAgent(t, dir)
	host := channel.NewServer(discard())
	s := startup{ready: make(chan Peer, 4)}
	vmtools.RegisterStartupListenerServer(host, s)
	t.Cleanup(host.Stop)

	l := (&Dialer{Host: host}).Dial(resource.VM{Owner: "o", Name: "n", Dir: dir, Log: discard()})
	defer l.Close()
	want := Peer{Owner: "o", Name: "n"}
	awaitReady := func() {
		t.Helper()
		select {
		case got := <-s.ready:
			if got != want {
				t.Errorf("VmReady from %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no VmReady")
		}
	}
	awaitReady()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.SetTime(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := l.SetTimezone(ctx, "Europe/Paris"); err != nil {
		t.Fatal(err)
	}

	a.dropSessions()
	awaitReady()
	if err := l.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := a.seen()
	if len(got) != 3 || got[0] != "time" || got[1] != "timezone Europe/Paris" || got[2] != "shutdown" {
		t.Errorf("agent saw %q", got)
	}

	l.Close()
	l.Close()
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := l.SetTime(short, time.Now()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("SetTime on a closed link = %v, want unavailable", err)
	}
}

// The ports resource gives the VM the channel's two ports and removes
// their sockets once the VM is gone.
func TestPorts(t *testing.T) {
	dir := statedir.VMDir(t.TempDir())
	vm := resource.VM{Name: "n", Dir: dir, Log: discard()}
	var cfg hypervisor.Config
	h, err := Ports{}.Prepare(context.Background(), vm, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []hypervisor.Port{
		{Name: bootcfg.AgentPort, Socket: dir.AgentSocket()},
		{Name: bootcfg.RPCPort, Socket: dir.RPCSocket()},
	}
	if len(cfg.Ports) != 2 || cfg.Ports[0] != want[0] || cfg.Ports[1] != want[1] {
		t.Errorf("ports %+v, want %+v", cfg.Ports, want)
	}
	for _, p := range want {
		if err := os.WriteFile(p.Socket, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		if _, err := os.Stat(p.Socket); !os.IsNotExist(err) {
			t.Errorf("%s after release: %v", p.Socket, err)
		}
	}
	if err := h.Release(context.Background()); err != nil {
		t.Errorf("release with the sockets gone: %v", err)
	}
}

func TestIPv4Config(t *testing.T) {
	c, err := IPv4Config(vmm.GuestNetwork{
		Address: netip.MustParsePrefix("100.115.92.26/30"),
		Gateway: netip.MustParseAddr("100.115.92.25"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Network byte order: the little-endian bytes of each are the
	// address's, as semantics.md says.
	le := func(v uint32) string {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		return net.IP(b[:]).String()
	}
	if le(c.GetAddress()) != "100.115.92.26" || le(c.GetNetmask()) != "255.255.255.252" || le(c.GetGateway()) != "100.115.92.25" {
		t.Errorf("config %s/%s via %s", le(c.GetAddress()), le(c.GetNetmask()), le(c.GetGateway()))
	}
	if _, err := IPv4Config(vmm.GuestNetwork{Address: netip.MustParsePrefix("fd00::2/64"), Gateway: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("an IPv6 network was taken")
	}
}
