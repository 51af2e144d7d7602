package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Port is the guest end of a virtio-serial port, open for the agent's whole
// life. While no host process holds the port's socket, reads return EOF at
// once, again and again; so a connection ends when the host goes, and the
// next starts when a host comes back.
type Port struct {
	f    *os.File
	name string
	log  *slog.Logger
}

// OpenPort opens the port device.
func OpenPort(path string, log *slog.Logger) (*Port, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("channel: open port: %w", err)
	}
	return &Port{f: f, name: path, log: log}, nil
}

// Close closes the port.
func (p *Port) Close() error { return p.f.Close() }

// hostConnected reports whether a host process holds the port's socket: the
// virtio console driver flags the port with POLLHUP while none does.
func (p *Port) hostConnected() (bool, error) {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return false, err
	}
	var connected bool
	var perr error
	err = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, perr = unix.Poll(fds, 0)
			if perr != unix.EINTR {
				break
			}
		}
		connected = fds[0].Revents&unix.POLLHUP == 0
	})
	if err != nil {
		return false, err
	}
	return connected, perr
}

// WaitHost blocks until a host process holds the port's socket. The driver
// gives no blocking way to wait for that, so it polls, backing off from 5 ms
// to 100 ms: quick on the first connect after boot, cheap while cabind is
// away.
func (p *Port) WaitHost(ctx context.Context) error {
	delay := 5 * time.Millisecond
	for {
		ok, err := p.hostConnected()
		if err != nil {
			return fmt.Errorf("channel: poll port: %w", err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// session is the port as one host's connection: closing it ends the
// connection but keeps the port open for the next host.
type session struct {
	p    *Port
	done chan struct{}
}

var _ net.Conn = (*session)(nil)

func (s *session) LocalAddr() net.Addr                { return portAddr(s.p.name) }
func (s *session) RemoteAddr() net.Addr               { return portAddr("host") }
func (s *session) SetDeadline(t time.Time) error      { return s.p.f.SetDeadline(t) }
func (s *session) SetReadDeadline(t time.Time) error  { return s.p.f.SetReadDeadline(t) }
func (s *session) SetWriteDeadline(t time.Time) error { return s.p.f.SetWriteDeadline(t) }

// portAddr names an end of a port.
type portAddr string

func (portAddr) Network() string  { return "virtio-serial" }
func (a portAddr) String() string { return string(a) }

func (s *session) Read(b []byte) (int, error) {
	select {
	case <-s.done:
		return 0, io.EOF
	default:
	}
	return s.p.f.Read(b)
}

func (s *session) Write(b []byte) (int, error) {
	select {
	case <-s.done:
		return 0, io.ErrClosedPipe
	default:
	}
	return s.p.f.Write(b)
}

// Close ends the session. yamux waits for its reader to return, so a read
// or write blocked on the port is cut short with a deadline (the port is
// pollable, so os.File honours deadlines); that also keeps a write queued by
// this session from reaching the next host.
func (s *session) Close() error {
	select {
	case <-s.done:
	default:
		close(s.done)
		now := time.Now()
		s.p.f.SetReadDeadline(now)
		s.p.f.SetWriteDeadline(now)
	}
	return nil
}

// ServeConns hands each host's connection to the port to handle, until ctx
// ends: it waits for a host and calls handle, which must return once the
// connection fails (the host went away); then it waits for the next host.
func (p *Port) ServeConns(ctx context.Context, handle func(net.Conn)) error {
	for {
		if err := p.WaitHost(ctx); err != nil {
			return err
		}
		p.f.SetDeadline(time.Time{})
		conn := &session{p: p, done: make(chan struct{})}
		p.log.Debug("host connected", "port", p.name)
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		handle(conn)
		conn.Close()
		stop()
		p.log.Debug("host disconnected", "port", p.name)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Serve runs a yamux session over each host's connection to the port, until
// ctx ends. handle must return once the session is closed.
func (p *Port) Serve(ctx context.Context, handle func(*Session)) error {
	var serr error
	err := p.ServeConns(ctx, func(conn net.Conn) {
		sess, err := ServerSession(conn, p.log)
		if err != nil {
			serr = err
			return
		}
		stop := context.AfterFunc(ctx, func() { sess.Close() })
		defer stop()
		handle(sess)
		sess.Close()
		<-sess.CloseChan()
	})
	if serr != nil {
		return serr
	}
	return err
}

// Echo copies what the host sends back to it until ctx ends: the raw
// baseline the RPC benchmarks compare against. It survives host reconnects.
func (p *Port) Echo(ctx context.Context) error {
	buf := make([]byte, 64<<10)
	for {
		if err := p.WaitHost(ctx); err != nil {
			return err
		}
		for {
			n, err := p.f.Read(buf)
			if n > 0 {
				if _, werr := p.f.Write(buf[:n]); werr != nil {
					return fmt.Errorf("channel: echo: %w", werr)
				}
			}
			if errors.Is(err, io.EOF) {
				break // host gone
			}
			if err != nil {
				return fmt.Errorf("channel: echo: %w", err)
			}
		}
	}
}
