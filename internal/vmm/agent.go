package vmm

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// GuestServer serves the host's services (StartupListener, ...) to guests.
// The manager calls Serve with each VM's session; calls arriving on it carry
// the VM's key (see PeerKey).
type GuestServer interface {
	Serve(net.Listener) error
}

// agentLink is the host end of one VM's channel. It connects to the socket
// QEMU exposes for the agent's port, and reconnects whenever the session
// ends while the VM runs, as it does after a daemon restart.
type agentLink struct {
	key    Key
	path   string
	rpc    string
	guests GuestServer
	log    *slog.Logger

	mu sync.Mutex
	cc *channel.Client // nil while there is no session
	// up is closed when cc is set, and replaced when the session ends.
	up chan struct{}
}

func newAgentLink(key Key, dir statedir.VMDir, guests GuestServer, log *slog.Logger) *agentLink {
	return &agentLink{key: key, path: dir.AgentSocket(), rpc: dir.RPCSocket(), guests: guests, log: log, up: make(chan struct{})}
}

// run keeps a session up until ctx ends.
func (a *agentLink) run(ctx context.Context) {
	const maxBackoff = 200 * time.Millisecond
	backoff := 5 * time.Millisecond
	for ctx.Err() == nil {
		sess, err := channel.DialSocket(a.path, a.log)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = 5 * time.Millisecond
		a.session(ctx, sess)
	}
}

// session serves one session until it ends.
func (a *agentLink) session(ctx context.Context, sess *channel.Session) {
	cc, err := channel.Dial(sess, a.rpc)
	if err != nil {
		a.log.Error("agent client", "err", err)
		sess.Close()
		return
	}
	go a.guests.Serve(&keyedListener{Session: sess, key: a.key})
	a.set(cc)
	select {
	case <-sess.CloseChan():
		a.log.Debug("agent session ended")
	case <-ctx.Done():
	}
	a.set(nil)
	cc.Close()
	sess.Close()
}

func (a *agentLink) set(cc *channel.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cc = cc
	if cc != nil {
		close(a.up)
	} else {
		a.up = make(chan struct{})
	}
}

// conn returns the client connection to the agent, waiting for a session
// until ctx ends.
func (a *agentLink) conn(ctx context.Context) (*channel.Client, error) {
	for {
		a.mu.Lock()
		cc, up := a.cc, a.up
		a.mu.Unlock()
		if cc != nil {
			return cc, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, fmt.Errorf("agent of vm %s not connected: %w", a.key, errdefs.ErrUnavailable)
		}
	}
}

// keyedListener is a session as a listener whose connections say which VM
// they come from.
type keyedListener struct {
	*channel.Session
	key Key
}

func (l *keyedListener) Accept() (net.Conn, error) {
	c, err := l.Session.Accept()
	if err != nil {
		return nil, err
	}
	return &keyedConn{Conn: c, addr: vmAddr{l.key}}, nil
}

type keyedConn struct {
	net.Conn
	addr vmAddr
}

func (c *keyedConn) RemoteAddr() net.Addr { return c.addr }

// vmAddr is the peer address of calls from a guest.
type vmAddr struct{ key Key }

func (vmAddr) Network() string  { return "cabin-vm" }
func (a vmAddr) String() string { return a.key.String() }

// PeerKey returns the VM a guest call comes from, given its peer address
// (peer.FromContext(ctx).Addr).
func PeerKey(addr net.Addr) (Key, bool) {
	a, ok := addr.(vmAddr)
	return a.key, ok
}
