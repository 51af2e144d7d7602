// Package guestlink is cabind's link to each VM's agent: the channel's
// virtio-serial ports as a per-VM resource (Ports), a session to the agent
// kept up for as long as the VM runs and made again after each
// disconnection, as after a daemon restart (Dialer, Link), the host's
// services served to the guest on that session, and the calls the VM
// manager makes into the guest (vmm.Guest) over Maitred.
package guestlink

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/vmm"
)

// HostServices serves the host's services (StartupListener, ...) to a
// guest, on the session of its link; the calls carry the VM's identity as
// their peer address (see PeerOf).
type HostServices interface {
	Serve(net.Listener) error
}

// Dialer makes Links. It implements vmm.GuestDialer.
type Dialer struct {
	// Host serves the host's services on each session.
	Host HostServices
}

var _ vmm.GuestDialer = (*Dialer)(nil)

// Dial starts a Link to the agent of vm.
func (d *Dialer) Dial(vm resource.VM) vmm.GuestLink {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Link{
		peer:   Peer{Owner: vm.Owner, Name: vm.Name},
		path:   vm.Dir.AgentSocket(),
		rpc:    vm.Dir.RPCSocket(),
		host:   d.Host,
		log:    vm.Log,
		up:     make(chan struct{}),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
	return l
}

// Link is the host end of one VM's channel. It connects to the socket QEMU
// exposes for the agent's port, and reconnects whenever the session ends,
// until Close.
type Link struct {
	peer Peer
	path string
	rpc  string
	host HostServices
	log  *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	cc *channel.Client // nil while there is no session
	// up is closed when cc is set, and replaced when the session ends.
	up chan struct{}
}

var _ vmm.GuestLink = (*Link)(nil)

// Close ends the link and waits for its session to end. It may be called
// more than once.
func (l *Link) Close() {
	l.cancel()
	<-l.done
}

// run keeps a session up until ctx ends.
func (l *Link) run(ctx context.Context) {
	const maxBackoff = 200 * time.Millisecond
	backoff := 5 * time.Millisecond
	for ctx.Err() == nil {
		sess, err := channel.DialSocket(l.path, l.log)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = 5 * time.Millisecond
		l.session(ctx, sess)
	}
}

// session serves one session until it ends.
func (l *Link) session(ctx context.Context, sess *channel.Session) {
	cc, err := channel.Dial(sess, l.rpc)
	if err != nil {
		l.log.Error("agent client", "err", err)
		sess.Close()
		return
	}
	go l.host.Serve(&peerListener{Session: sess, peer: l.peer})
	l.set(cc)
	select {
	case <-sess.CloseChan():
		l.log.Debug("agent session ended")
	case <-ctx.Done():
	}
	l.set(nil)
	cc.Close()
	sess.Close()
}

func (l *Link) set(cc *channel.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cc = cc
	if cc != nil {
		close(l.up)
	} else {
		l.up = make(chan struct{})
	}
}

// Conn returns the client connection to the agent, waiting for a session
// until ctx ends. It is what cabind's relay forwards calls on.
func (l *Link) Conn(ctx context.Context) (grpc.ClientConnInterface, error) {
	for {
		l.mu.Lock()
		cc, up := l.cc, l.up
		l.mu.Unlock()
		if cc != nil {
			return cc, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("agent of vm %s not connected: %w", l.peer, errdefs.ErrUnavailable)
		}
	}
}

func (l *Link) maitred(ctx context.Context) (vmtools.MaitredClient, error) {
	cc, err := l.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return vmtools.NewMaitredClient(cc), nil
}

// SetTime sets the guest's clock (Maitred.SetTime).
func (l *Link) SetTime(ctx context.Context, t time.Time) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	_, err = m.SetTime(ctx, &vmtools.SetTimeRequest{Time: timestamppb.New(t)})
	return err
}

// SetTimezone sets the guest's time zone (Maitred.SetTimezone).
func (l *Link) SetTimezone(ctx context.Context, name string) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	_, err = m.SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: name})
	return err
}

// Shutdown asks the guest to power off (Maitred.Shutdown).
func (l *Link) Shutdown(ctx context.Context) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	_, err = m.Shutdown(ctx, &vmtools.EmptyMessage{})
	return err
}

// ConfigureNetwork gives the guest its address, gateway and DNS
// (Maitred.ConfigureNetwork).
func (l *Link) ConfigureNetwork(ctx context.Context, n vmm.GuestNetwork) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	ipv4, err := IPv4Config(n)
	if err != nil {
		return err
	}
	_, err = m.ConfigureNetwork(ctx, &vmtools.NetworkConfigRequest{
		Ipv4Config:   ipv4,
		ResolvConfig: resolvConfig(n.DNS),
	})
	return err
}

// SetDNS changes the guest's DNS settings (Maitred.SetResolvConfig).
func (l *Link) SetDNS(ctx context.Context, d vmm.DNS) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	_, err = m.SetResolvConfig(ctx, &vmtools.SetResolvConfigRequest{ResolvConfig: resolvConfig(d)})
	return err
}

func resolvConfig(d vmm.DNS) *vmtools.ResolvConfig {
	return &vmtools.ResolvConfig{Nameservers: d.Nameservers, SearchDomains: d.SearchDomains}
}

// IPv4Config is n's address, netmask and gateway as Maitred takes them:
// fixed32s in network byte order (spec/semantics.md).
func IPv4Config(n vmm.GuestNetwork) (*vmtools.IPv4Config, error) {
	if !n.Address.IsValid() || !n.Address.Addr().Is4() || !n.Gateway.Is4() {
		return nil, fmt.Errorf("guest network %v via %v: not IPv4: %w", n.Address, n.Gateway, errdefs.ErrInvalidArgument)
	}
	mask := netip.PrefixFrom(n.Address.Addr(), n.Address.Bits()).Masked()
	bits := ^uint32(0) << (32 - mask.Bits())
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], bits)
	return &vmtools.IPv4Config{
		Address: Wire(n.Address.Addr()),
		Netmask: binary.LittleEndian.Uint32(m[:]),
		Gateway: Wire(n.Gateway),
	}, nil
}

// Wire is an IPv4 address as a fixed32 field carries it: in network byte
// order, so its little-endian bytes are the address's (spec/semantics.md).
func Wire(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}
