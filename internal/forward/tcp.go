package forward

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// dialTimeout bounds the connection to the guest each forwarded
// connection or UDP flow makes: a guest that does not answer by then is
// not going to.
const dialTimeout = 30 * time.Second

// guestDial connects to a forward's guest port.
type guestDial func(ctx context.Context) (net.Conn, error)

// conns is a forward's connections, closed with it.
type conns struct {
	mu     sync.Mutex
	set    map[io.Closer]struct{}
	closed bool
}

// add tracks c, or closes it and returns false when the forward has
// ended.
func (cs *conns) add(c io.Closer) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return false
	}
	if cs.set == nil {
		cs.set = map[io.Closer]struct{}{}
	}
	cs.set[c] = struct{}{}
	return true
}

func (cs *conns) remove(c io.Closer) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.set, c)
}

// closeAll closes every connection tracked, and any added later.
func (cs *conns) closeAll() {
	cs.mu.Lock()
	cs.closed = true
	set := cs.set
	cs.set = nil
	cs.mu.Unlock()
	for c := range set {
		c.Close()
	}
}

// tcpServer serves a TCP forward: each connection accepted is carried to
// a connection of its own to the guest's port.
type tcpServer struct {
	ln     net.Listener
	dial   guestDial
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	conns  conns
	wg     sync.WaitGroup
}

func listenTCP(f Forward, dial guestDial, log *slog.Logger) (*tcpServer, error) {
	ln, err := net.Listen("tcp", f.Host().String())
	if err != nil {
		return nil, listenError(f, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &tcpServer{ln: ln, dial: dial, log: log, ctx: ctx, cancel: cancel}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *tcpServer) serve() {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: wait, as net/http does, rather
			// than spin or give up the forward.
			s.log.Warn("forward: accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.carry(c)
		}()
	}
}

// carry connects c to the guest's port and copies between them until both
// sides are done. A client whose guest port cannot be reached is reset,
// as a refused connection would be.
func (s *tcpServer) carry(c net.Conn) {
	if !s.conns.add(c) {
		return
	}
	defer s.conns.remove(c)
	ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
	g, err := s.dial(ctx)
	cancel()
	if err != nil {
		logDial(s.ctx, s.log, c.RemoteAddr().String(), err)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
		return
	}
	if !s.conns.add(g) {
		c.Close()
		return
	}
	defer s.conns.remove(g)
	proxy(c, g)
}

func (s *tcpServer) close() {
	s.cancel()
	s.ln.Close()
	s.conns.closeAll()
	s.wg.Wait()
}

// closeWriter is a connection that can half-close: *net.TCPConn, and the
// guest's connections over the channel.
type closeWriter interface {
	CloseWrite() error
}

// proxy copies between a and b both ways until each side has sent all it
// will (a half-close is passed on as one) or either fails, then closes
// both.
func proxy(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(b, a)
	}()
	pipe(a, b)
	<-done
	a.Close()
	b.Close()
}

// pipe copies src to dst until src ends, then half-closes dst. A failure
// either way ends both connections: the other direction has nowhere to
// go either.
func pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(closeWriter); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
}
