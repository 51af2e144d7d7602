package kata

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/guest/ttyio"
)

// consoleTimeout bounds the wait for the terminal's master once the
// runtime has exited; it sends it before it exits, so this only guards
// against one that does not.
const consoleTimeout = 5 * time.Second

// consoleSocket is the agent's end of the socket over which the runtime
// sends a terminal's master (its fd 3 with --terminal).
type consoleSocket struct {
	fd int
}

// newConsoleSocket returns the agent's end and the runtime's.
func newConsoleSocket() (*consoleSocket, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("console socket: %w", err)
	}
	return &consoleSocket{fd: fds[0]}, os.NewFile(uintptr(fds[1]), "console-socket"), nil
}

func (c *consoleSocket) Close() { unix.Close(c.fd) }

// receive takes the master the runtime sent: one descriptor, in an
// SCM_RIGHTS message. The master is made non-blocking, so that reads and
// writes on it can have deadlines and be woken.
func (c *consoleSocket) receive() (*os.File, error) {
	pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(consoleTimeout/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("wait for the terminal: %w", err)
		}
		if n == 0 {
			return nil, errors.New("the runtime sent no terminal")
		}
		break
	}
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*4))
	_, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("receive the terminal: %w", err)
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("receive the terminal: %w", err)
	}
	for _, m := range msgs {
		if got, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("receive the terminal: %d descriptors, want 1", len(fds))
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("terminal: %w", err)
	}
	// NewFile sees O_NONBLOCK and puts the master in Go's poller.
	return os.NewFile(uintptr(fds[0]), "pty-master"), nil
}

// openPeer opens the terminal's slave through its master. It works
// whichever devpts instance the terminal lives in (the container's), and
// the agent holds it so that the master does not read EIO before the
// process's exit is known (see outStream).
func openPeer(master *os.File) (*os.File, error) {
	var fd int
	err := ttyio.Control(master, func(mfd int) error {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER,
			uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
		if errno != 0 {
			return errno
		}
		fd = int(r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open the terminal's slave: %w", err)
	}
	return os.NewFile(uintptr(fd), "pty-slave"), nil
}
