package guestlink

import (
	"net"

	"github.com/cabinvm/cabin/internal/channel"
)

// Peer is the VM a guest's call comes from.
type Peer struct {
	Owner, Name string
}

func (p Peer) String() string {
	if p.Owner == "" {
		return p.Name
	}
	return p.Owner + "/" + p.Name
}

// PeerOf returns the VM a guest's call comes from, given the call's peer
// address (peer.FromContext(ctx).Addr); false for a call from anywhere
// else.
func PeerOf(addr net.Addr) (Peer, bool) {
	a, ok := addr.(vmAddr)
	return a.peer, ok
}

// peerListener is a session as a listener whose connections say which VM
// they come from.
type peerListener struct {
	*channel.Session
	peer Peer
}

func (l *peerListener) Accept() (net.Conn, error) {
	c, err := l.Session.Accept()
	if err != nil {
		return nil, err
	}
	return &peerConn{Conn: c, addr: vmAddr{l.peer}}, nil
}

type peerConn struct {
	net.Conn
	addr vmAddr
}

func (c *peerConn) RemoteAddr() net.Addr { return c.addr }

// vmAddr is the peer address of calls from a guest.
type vmAddr struct{ peer Peer }

func (vmAddr) Network() string  { return "cabin-vm" }
func (a vmAddr) String() string { return a.peer.String() }
