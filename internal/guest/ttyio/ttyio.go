// Package ttyio holds the terminal operations the guest's services share
// on a pseudo-terminal master that Go's poller owns: they reach the
// descriptor without (*os.File).Fd, which would put it in blocking mode for
// good (a blocking master can have no read deadline, and a Close does not
// wake a pending Read).
package ttyio

import (
	"os"

	"golang.org/x/sys/unix"
)

// Control runs fn on f's descriptor without (*os.File).Fd.
func Control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// SetWinsize sets the terminal's size; the kernel sends SIGWINCH to its
// foreground process group when it changes.
func SetWinsize(master *os.File, rows, cols uint16) error {
	ws := &unix.Winsize{Row: rows, Col: cols}
	return Control(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, ws)
	})
}

// EOFChar is the terminal's end-of-file character (VEOF), ^D unless the
// process changed it. On a master, TCGETS reads the slave's settings.
func EOFChar(master *os.File) byte {
	const ctrlD = 4
	var c byte
	err := Control(master, func(fd int) error {
		t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return err
		}
		c = t.Cc[unix.VEOF]
		return nil
	})
	// 0 is _POSIX_VDISABLE: no EOF character is set, and ^D is still what
	// a user would type.
	if err != nil || c == 0 {
		return ctrlD
	}
	return c
}

// ptyBacklog bounds what a terminal can hold that its process wrote: the
// line discipline's 4 KiB and 64 KiB of flip buffers, with room to spare.
const ptyBacklog = 256 << 10

// Backlog is the most f, a process's output, can hold unread: a pipe's
// capacity (the process may have enlarged it), or a terminal's bound.
// After the process exits, a reader that has read this much more has
// read all it wrote before exiting.
func Backlog(f *os.File) int64 {
	var n int
	err := Control(f, func(fd int) error {
		var err error
		n, err = unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0)
		return err
	})
	if err != nil || n <= 0 {
		return ptyBacklog
	}
	return int64(n)
}
