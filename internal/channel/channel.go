// Package channel carries cabin's host–guest traffic over the agent's
// virtio-serial ports (the guest's port device on one end, the unix socket
// QEMU exposes for it on the other). The agent port carries a yamux
// session: both ends open streams on it, so each side serves gRPC and calls
// the other. The RPC port carries unary calls framed by package unary.
// Server and Client serve and make both kinds of call.
package channel

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is a multiplexed session. It is a net.Listener (Accept yields the
// streams the peer opens), and Open starts a stream to the peer.
type Session = yamux.Session

// Receive windows: how much a side lets its peer send on a stream before
// it reads. yamux buffers up to that much per stream, and the buffer
// never shrinks while the stream lives; the channel's gRPC connection is
// one stream for the session's whole life.
const (
	// hostWindow lets exec output stream without a window update per
	// 256 KiB round trip; the host has memory to spare.
	hostWindow = 1 << 20
	// guestWindow is yamux's default. At 1 MiB the agent kept 1.2 MiB of
	// buffer after a large exec input, for no more speed: input is bound
	// by QEMU.
	guestWindow = 256 << 10
)

func config(log *slog.Logger, window uint32) *yamux.Config {
	c := yamux.DefaultConfig()
	// Liveness comes from the transport: the port reads EOF when the host
	// goes, the socket when QEMU does. Pings would only wake an idle guest.
	c.EnableKeepAlive = false
	c.MaxStreamWindowSize = window
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	c.ConnectionWriteTimeout = 30 * time.Second
	return c
}

// ServerSession starts the guest end of a session over conn.
func ServerSession(conn io.ReadWriteCloser, log *slog.Logger) (*Session, error) {
	s, err := yamux.Server(coalesce(conn), config(log, guestWindow))
	if err != nil {
		return nil, fmt.Errorf("channel: start session: %w", err)
	}
	return s, nil
}

// ClientSession starts the host end of a session over conn.
func ClientSession(conn io.ReadWriteCloser, log *slog.Logger) (*Session, error) {
	s, err := yamux.Client(coalesce(conn), config(log, hostWindow))
	if err != nil {
		return nil, fmt.Errorf("channel: start session: %w", err)
	}
	return s, nil
}

// DialSocket connects to a unix socket and starts the host end of a session
// on it: QEMU's socket for a VM's agent port, or an agent run as an ordinary
// process listening on a socket.
func DialSocket(path string, log *slog.Logger) (*Session, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	s, err := ClientSession(conn, log)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// portWrite is the most the guest's virtio console driver takes in one
// write to a port (port_fops_write caps it at 32 KiB); a longer write is
// cut into that many writes, each a guest exit and a message on the host.
const portWrite = 32 << 10

// yamux frame header: version(1) type(1) flags(2) stream(4) length(4).
const (
	headerSize = 12
	typeData   = 0
)

// coalesce joins each yamux data header with the body write that follows
// it. yamux writes them separately, and on a virtio-serial port every
// write is a guest exit and a message the host handles on its own.
func coalesce(conn io.ReadWriteCloser) io.ReadWriteCloser {
	return &coalescer{ReadWriteCloser: conn}
}

type coalescer struct {
	io.ReadWriteCloser
	// pending is a data header waiting for its body. yamux has one writer
	// goroutine, so no lock is needed.
	pending []byte
	want    int
	buf     []byte
}

func (c *coalescer) Write(p []byte) (int, error) {
	if c.pending != nil {
		if len(p) != c.want {
			// Not the body we expected: send both as they are.
			if _, err := c.ReadWriteCloser.Write(c.pending); err != nil {
				c.pending = nil
				return 0, err
			}
			c.pending = nil
			return c.ReadWriteCloser.Write(p)
		}
		// The header and as much of the body as fills one port write go
		// together; the rest of the body goes as it is, in whole port
		// writes, without being copied: under TCG a copy of every byte
		// sent showed in the agent's profile (decisions §31).
		head := min(len(p), portWrite-len(c.pending))
		c.buf = append(append(c.buf[:0], c.pending...), p[:head]...)
		c.pending = nil
		if _, err := c.ReadWriteCloser.Write(c.buf); err != nil {
			return 0, err
		}
		if head < len(p) {
			if n, err := c.ReadWriteCloser.Write(p[head:]); err != nil {
				return head + n, err
			}
		}
		return len(p), nil
	}
	if len(p) == headerSize && p[1] == typeData {
		if n := int(binary.BigEndian.Uint32(p[8:12])); n > 0 {
			c.pending = append(c.pending[:0:0], p...)
			c.want = n
			return len(p), nil
		}
	}
	return c.ReadWriteCloser.Write(p)
}

// yamuxLogger sends yamux's messages to slog at debug level: its errors
// are about the peer going away, which the callers report themselves.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug(fmt.Sprint(v...)) }
