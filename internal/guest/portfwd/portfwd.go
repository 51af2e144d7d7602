// Package portfwd serves cabin.v1.GuestPorts in the guest: a connection
// from the host to a port on the guest's 127.0.0.1, carried over the VM's
// channel, for the port forwards of a VM that has no network of its own
// for cabind to reach it on (QEMU's user-mode network, or none). Each call
// is one TCP connection, or one UDP client's datagrams.
package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	portfwdv1 "github.com/cabinvm/cabin/api/cabin/portfwd/v1"
	"github.com/cabinvm/cabin/internal/dgram"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// Service serves cabin.v1.GuestPorts.
type Service struct {
	portfwdv1.UnimplementedGuestPortsServer
	log *slog.Logger
	// loopback is where connections go: 127.0.0.1.
	loopback netip.Addr
	// upMu makes one caller at a time bring the loopback up.
	upMu sync.Mutex
}

var _ portfwdv1.GuestPortsServer = (*Service)(nil)

// New returns the service.
func New(log *slog.Logger) *Service {
	return &Service{log: log, loopback: netip.AddrFrom4([4]byte{127, 0, 0, 1})}
}

// Connect connects to the port the first request names and carries bytes
// both ways: see the service's definition.
func (s *Service) Connect(stream portfwdv1.GuestPorts_ConnectServer) error {
	req, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("open", "the stream ended before it"))
	}
	if err != nil {
		return err
	}
	open := req.GetOpen()
	if open == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("open", "the first request must carry it"))
	}
	if p := open.GetPort(); p < 1 || p > 65535 {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("port", fmt.Sprintf("%d is not a port: must be 1 to 65535", p)))
	}
	proto := "tcp"
	if open.GetUdp() {
		proto = "udp"
	}
	ctx := stream.Context()
	conn, err := s.dial(ctx, proto, int(open.GetPort()))
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer conn.Close()
	if err := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Opened{Opened: &portfwdv1.GuestPortOpened{}}}); err != nil {
		return err
	}
	udp := open.GetUdp()
	fromHost := make(chan error, 1)
	go func() { fromHost <- s.fromHost(stream, conn, udp) }()
	err = toHost(stream, conn, udp)
	switch {
	case err == nil:
		// The guest's side has said all it will; the call lasts while
		// the host's has more to say.
		select {
		case err := <-fromHost:
			return errgrpc.ToGRPC(err)
		case <-ctx.Done():
			return ctx.Err()
		}
	case errors.Is(err, net.ErrClosed):
		// The host's side closed the socket: ended, or failed.
		return errgrpc.ToGRPC(<-fromHost)
	}
	return errgrpc.ToGRPC(err)
}

// dial connects to port on the loopback. A guest whose loopback is down
// (nothing in it brought it up: the agent is PID 1) has it brought up, as
// any init would, and is tried again.
func (s *Service) dial(ctx context.Context, proto string, port int) (net.Conn, error) {
	addr := netip.AddrPortFrom(s.loopback, uint16(port)).String()
	var d net.Dialer
	conn, err := d.DialContext(ctx, proto, addr)
	if errors.Is(err, syscall.ENETUNREACH) {
		if uerr := s.upLoopback(); uerr != nil {
			return nil, errdefs.Errorf(errdefs.ErrUnavailable, "connect to %s %s in the guest: %w (and bringing the loopback up: %w)", proto, addr, err, uerr)
		}
		conn, err = d.DialContext(ctx, proto, addr)
	}
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrUnavailable, "connect to %s %s in the guest: %w", proto, addr, err)
	}
	return conn, nil
}

// upLoopback brings the loopback interface up if it is down.
func (s *Service) upLoopback() error {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: bring it up: %w", err)
	}
	s.log.Info("brought the loopback interface up, for a port forward")
	return nil
}

// toHost sends what the guest's socket reads to the host: a stream's
// bytes in chunks, then eof when it ends; or each datagram as a message.
// It returns nil once a stream has ended and eof is sent.
func toHost(stream portfwdv1.GuestPorts_ConnectServer, conn net.Conn, udp bool) error {
	if udp {
		return datagramsToHost(stream, conn)
	}
	buf := make([]byte, portfwdv1.MaxChunk)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Data{Data: buf[:n]}}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Eof{Eof: &portfwdv1.GuestPortEOF{}}})
		}
		if err != nil {
			return errdefs.Errorf(errdefs.ErrUnavailable, "read from the guest's socket: %w", err)
		}
	}
}

// datagramsToHost sends each datagram the guest's socket reads to the
// host, as a message of its own, until reading fails.
func datagramsToHost(stream portfwdv1.GuestPorts_ConnectServer, conn net.Conn) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("a datagram socket without a descriptor: %T: %w", conn, errdefs.ErrInternal)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	for {
		d, err := dgram.Read(rc)
		if err != nil {
			return errdefs.Errorf(errdefs.ErrUnavailable, "read from the guest's socket: %w", err)
		}
		if err := stream.Send(&portfwdv1.GuestPortResponse{Kind: &portfwdv1.GuestPortResponse_Data{Data: d}}); err != nil {
			return err
		}
	}
}

// fromHost writes what the host sends to the guest's socket until the
// host's end of input, which half-closes a stream's socket and closes a
// datagram one. A failure closes the socket, which ends toHost too.
func (s *Service) fromHost(stream portfwdv1.GuestPorts_ConnectServer, conn net.Conn, udp bool) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if cw, ok := conn.(interface{ CloseWrite() error }); ok && !udp {
				if cw.CloseWrite() == nil {
					return nil
				}
			}
			conn.Close()
			return nil
		}
		if err != nil {
			conn.Close()
			return err
		}
		data, ok := req.GetKind().(*portfwdv1.GuestPortRequest_Data)
		if !ok {
			conn.Close()
			return errdefs.InvalidArgument("data", "after open, every request must carry data")
		}
		if _, err := conn.Write(data.Data); err != nil {
			conn.Close()
			return errdefs.Errorf(errdefs.ErrUnavailable, "write to the guest's socket: %w", err)
		}
	}
}
