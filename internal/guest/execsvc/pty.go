package execsvc

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal: the master, non-blocking and in
// Go's poller, and the slave, blocking, for the child.
//
// It does not use creack/pty's Open: that calls (*os.File).Fd on the
// master, which puts it in blocking mode for good. A blocking master can
// have no read deadline and a Close does not wake a pending Read, and both
// are what lets the drain after the exit, and a cancelled stream, stop
// without waiting on the terminal.
func openPTY() (master, slave *os.File, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(mfd)
		}
	}()
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	// The slave stays blocking: its open file is shared with the child,
	// and a child whose stdin is non-blocking sees EAGAIN.
	flags := unix.O_RDWR | unix.O_NOCTTY | unix.O_CLOEXEC
	// TIOCGPTPEER opens this master's own slave, whatever is mounted at
	// /dev/pts; opening by name is for kernels before 4.13.
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER, uintptr(flags))
	if errno != 0 {
		if !errors.Is(errno, unix.EINVAL) && !errors.Is(errno, unix.ENOTTY) {
			return nil, nil, fmt.Errorf("open pty slave: %w", errno)
		}
		fd, err := unix.Open(name, flags, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open %s: %w", name, err)
		}
		sfd = uintptr(fd)
	}
	// NewFile sees O_NONBLOCK on the master and registers it with the
	// poller; the slave it leaves as it is.
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), os.NewFile(sfd, name), nil
}
