// Package dgram reads datagrams at their own size. A port forward's UDP
// flow, at either end (cabind's listener, the guest's socket), would
// otherwise hold a buffer for the largest datagram (64 KiB) while it idles;
// a few dozen flows would cost the guest agent megabytes where most
// datagrams are small.
package dgram

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// Read reads the next datagram of the socket rc refers to into a buffer
// of the datagram's size, which it peeks first (MSG_TRUNC returns the
// datagram's length). It waits, through the runtime's poller, for one to
// come.
func Read(rc syscall.RawConn) ([]byte, error) {
	var (
		d    []byte
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) {
			return false
		}
		if err != nil {
			rerr = err
			return true
		}
		d = make([]byte, n)
		n, _, err = unix.Recvfrom(int(fd), d, 0)
		if errors.Is(err, unix.EAGAIN) {
			return false
		}
		d, rerr = d[:max(n, 0)], err
		return true
	})
	if err != nil {
		return nil, err
	}
	return d, rerr
}
