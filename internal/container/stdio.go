package container

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The descriptors the contract hands a container's process through.
const (
	fdStdin   = 3
	fdStdout  = 4
	fdStderr  = 5
	fdConsole = 3 // with --terminal
)

// Stdio is what a created or exec'd process gets: either its three
// standard files, or, for a terminal, a connected unix socket over which
// libcontainer sends the master of the terminal it makes in the container.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
	Console               *os.File
}

// InheritedStdio takes the stdio the contract passes to cabin-runtime:
// fds 3, 4 and 5, or with terminal the console socket on fd 3. It checks
// they are open (and fd 3 a unix socket for a terminal) so that a caller
// that forgot one gets an error, not a process writing into whatever the
// runtime opened there.
func InheritedStdio(terminal bool) (Stdio, error) {
	if terminal {
		if err := checkInherited(fdConsole); err != nil {
			return Stdio{}, invalidf("--terminal: fd %d: %w (the console socket is fd 3)", fdConsole, err)
		}
		if err := checkUnixSocket(fdConsole); err != nil {
			return Stdio{}, err
		}
		return Stdio{Console: os.NewFile(fdConsole, "console-socket")}, nil
	}
	for _, fd := range []int{fdStdin, fdStdout, fdStderr} {
		if err := checkInherited(fd); err != nil {
			return Stdio{}, invalidf("stdio: fd %d: %w (the process's stdin, stdout and stderr are fds 3, 4 and 5)", fd, err)
		}
	}
	return Stdio{
		Stdin:  os.NewFile(fdStdin, "stdin"),
		Stdout: os.NewFile(fdStdout, "stdout"),
		Stderr: os.NewFile(fdStderr, "stderr"),
	}, nil
}

// checkInherited makes sure fd was passed by the caller, not opened by
// this process in its place: when the caller leaves fds 3-5 closed, the
// first files opened here take those numbers (the Go runtime keeps its
// cgroup's CPU quota files open from startup, for GOMAXPROCS), and would
// become the container's stdio. Go opens every file close-on-exec, and a
// descriptor that crossed execve cannot be, so the flag tells them apart.
func checkInherited(fd int) error {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return fmt.Errorf("not passed: %w", err)
	}
	if flags&unix.FD_CLOEXEC != 0 {
		target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		return fmt.Errorf("not passed (it is the runtime's own %s)", target)
	}
	return nil
}

func checkUnixSocket(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return invalidf("--terminal: fd %d: not a socket: %w", fd, err)
	}
	if domain != unix.AF_UNIX {
		return invalidf("--terminal: fd %d: not a unix socket", fd)
	}
	return nil
}

// check makes sure s has what terminal asks for and nothing else.
func (s Stdio) check(terminal bool) error {
	if terminal {
		if s.Console == nil {
			return invalidf("--terminal: no console socket")
		}
		if s.Stdin != nil || s.Stdout != nil || s.Stderr != nil {
			return invalidf("--terminal: stdio files given with a console socket")
		}
		return nil
	}
	if s.Console != nil {
		return invalidf("console socket given without --terminal")
	}
	if s.Stdin == nil || s.Stdout == nil || s.Stderr == nil {
		return invalidf("stdio: stdin, stdout and stderr must all be given")
	}
	return nil
}

// checkTerminal requires the process's terminal field to agree with the
// --terminal flag: the flag decides what fd 3 is, the spec what the
// process expects, and a mismatch is a caller's mistake better caught than
// run with a socket for stdin.
func checkTerminal(field string, specTerminal, terminal bool) error {
	if specTerminal != terminal {
		return invalidf("%s.terminal is %t but --terminal is %t", field, specTerminal, terminal)
	}
	return nil
}
