package forward

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/dgram"
)

const (
	// maxFlows bounds the UDP clients a forward carries at once: each is
	// a connection to the guest. Datagrams from more are dropped, as a
	// full NAT table would.
	maxFlows = 1024
	// flowQueue is how many of a client's datagrams wait while its
	// connection to the guest is made; more are dropped.
	flowQueue = 64
	// maxDatagram is the largest UDP payload.
	maxDatagram = 65535
)

// udpServer serves a UDP forward: each client address is a flow, with a
// connection of its own to the guest's port, so that the guest's replies
// go back to the client that asked. A flow ends after idle without a
// datagram either way, or when the guest's end fails.
type udpServer struct {
	pc     *net.UDPConn
	dial   guestDial
	idle   time.Duration
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	flows map[netip.AddrPort]*flow
	// full is set while datagrams are dropped for want of flows, so that
	// it is logged once.
	full bool
}

// flow is one client's datagrams to the guest and back.
type flow struct {
	client netip.AddrPort
	in     chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	// last is when a datagram last went either way (UnixNano).
	last atomic.Int64
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

func listenUDP(f Forward, dial guestDial, idle time.Duration, log *slog.Logger) (*udpServer, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(f.Host()))
	if err != nil {
		return nil, listenError(f, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &udpServer{pc: pc, dial: dial, idle: idle, log: log, ctx: ctx, cancel: cancel, flows: map[netip.AddrPort]*flow{}}
	s.wg.Add(2)
	go s.serve()
	go s.reap()
	return s, nil
}

// serve reads the clients' datagrams and hands each to its flow.
func (s *udpServer) serve() {
	defer s.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := s.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("forward: read a datagram", "err", err)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		f := s.flow(from)
		if f == nil {
			continue
		}
		select {
		case f.in <- append([]byte(nil), buf[:n]...):
			f.touch()
		default:
			// Its connection to the guest is still being made, or the
			// guest reads slower than the client sends: a datagram lost.
		}
	}
}

// flow returns the client's flow, starting one for a new client; nil when
// there are too many.
func (s *udpServer) flow(client netip.AddrPort) *flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A flow that ended may not have left yet: a new one takes its place.
	if f := s.flows[client]; f != nil && f.ctx.Err() == nil {
		return f
	}
	if len(s.flows) >= maxFlows {
		if !s.full {
			s.full = true
			s.log.Warn("forward: too many udp clients at once; dropping the datagrams of new ones", "max", maxFlows)
		}
		return nil
	}
	s.full = false
	ctx, cancel := context.WithCancel(s.ctx)
	f := &flow{client: client, in: make(chan []byte, flowQueue), ctx: ctx, cancel: cancel}
	f.touch()
	s.flows[client] = f
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.carry(f)
		s.mu.Lock()
		if s.flows[client] == f {
			delete(s.flows, client)
		}
		s.mu.Unlock()
	}()
	return f
}

// carry connects the flow to the guest's port and carries its datagrams
// both ways until it ends.
func (s *udpServer) carry(f *flow) {
	defer f.cancel()
	ctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
	g, err := s.dial(ctx)
	cancel()
	if err != nil {
		logDial(f.ctx, s.log, f.client.String(), err)
		return
	}
	defer g.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer f.cancel()
		read := datagrams(g)
		for {
			d, err := read()
			if err != nil {
				return
			}
			if _, err := s.pc.WriteToUDPAddrPort(d, f.client); err != nil {
				s.log.Debug("forward: send a datagram to the client", "to", f.client.String(), "err", err)
			}
			f.touch()
		}
	}()
	for {
		select {
		case d := <-f.in:
			if _, err := g.Write(d); err != nil {
				f.cancel()
				<-done
				return
			}
		case <-f.ctx.Done():
			g.Close()
			<-done
			return
		}
	}
}

// reap ends the flows idle for longer than s.idle.
func (s *udpServer) reap() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.idle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
		cutoff := time.Now().Add(-s.idle).UnixNano()
		s.mu.Lock()
		for _, f := range s.flows {
			if f.last.Load() < cutoff {
				f.cancel()
			}
		}
		s.mu.Unlock()
	}
}

func (s *udpServer) close() {
	s.cancel()
	s.pc.Close()
	s.wg.Wait()
}

// datagramReader reads whole datagrams, each in a buffer of its own: the
// guest's connections over the channel, whose datagrams arrive as
// messages.
type datagramReader interface {
	ReadDatagram() ([]byte, error)
}

// datagrams returns a reader of c's datagrams that keeps no buffer
// between them: a flow waits for the guest's next answer for as long as
// it lives, and a buffer of the largest datagram in each would cost
// 64 KiB a client.
func datagrams(c net.Conn) func() ([]byte, error) {
	if r, ok := c.(datagramReader); ok {
		return r.ReadDatagram
	}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return func() ([]byte, error) { return dgram.Read(rc) }
		}
	}
	buf := make([]byte, maxDatagram)
	return func() ([]byte, error) {
		n, err := c.Read(buf)
		return buf[:n], err
	}
}
