package ttyio

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// openPair opens a pseudo-terminal with a non-blocking master, as the
// guest's services hold theirs.
func openPair(t *testing.T) (master, slave *os.File) {
	t.Helper()
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		t.Skipf("TIOCGPTPEER: %v", errno)
	}
	master, slave = os.NewFile(uintptr(mfd), "ptmx"), os.NewFile(sfd, "pts")
	t.Cleanup(func() { master.Close(); slave.Close() })
	return master, slave
}

func TestSetWinsize(t *testing.T) {
	master, slave := openPair(t)
	if err := SetWinsize(master, 50, 132); err != nil {
		t.Fatal(err)
	}
	ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Row != 50 || ws.Col != 132 {
		t.Errorf("slave's size %dx%d, want 50x132", ws.Row, ws.Col)
	}
}

func TestEOFChar(t *testing.T) {
	master, slave := openPair(t)
	if c := EOFChar(master); c != 4 {
		t.Errorf("default EOF character %d, want 4 (^D)", c)
	}
	tios, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tios.Cc[unix.VEOF] = 1 // ^A
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tios); err != nil {
		t.Fatal(err)
	}
	if c := EOFChar(master); c != 1 {
		t.Errorf("EOF character %d after the process set ^A, want 1", c)
	}
	// Control left the master non-blocking: Fd was never called on it.
	flags, err := unix.FcntlInt(uintptr(mustDup(t, master)), unix.F_GETFL, 0)
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("master flags %#x, %v: want O_NONBLOCK kept", flags, err)
	}
}

// mustDup duplicates f's descriptor through Control, so the test reads the
// file status flags (shared by duplicates) without calling f.Fd.
func mustDup(t *testing.T, f *os.File) int {
	t.Helper()
	var dup int
	if err := Control(f, func(fd int) (err error) {
		dup, err = unix.Dup(fd)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dup) })
	return dup
}

func TestBacklog(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	if n := Backlog(r); n != 1<<20 {
		t.Errorf("Backlog of a pipe enlarged to 1 MiB = %d", n)
	}
	master, _ := openPair(t)
	if n := Backlog(master); n != ptyBacklog {
		t.Errorf("Backlog of a terminal = %d, want %d", n, ptyBacklog)
	}
}
