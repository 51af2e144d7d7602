// Command probe is the process the container tests run: a static program
// that reports what it sees from inside a container, so the tests can
// check namespaces, stdio and signals from outside.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "probe: no mode")
		os.Exit(100)
	}
	switch os.Args[1] {
	case "report":
		report()
	case "trap":
		trap()
	case "tick":
		tick()
	case "tty":
		tty()
	case "syscalls":
		syscalls()
	default:
		fmt.Fprintln(os.Stderr, "probe: unknown mode", os.Args[1])
		os.Exit(100)
	}
}

// report prints its pid, host name and arguments, echoes its stdin, writes
// to stderr, and exits with the code given as its next argument.
func report() {
	host, _ := os.Hostname()
	fmt.Printf("pid=%d\nhost=%s\nargs=%s\n", os.Getpid(), host, strings.Join(os.Args[1:], ","))
	in, _ := io.ReadAll(os.Stdin)
	fmt.Printf("stdin=%s\n", in)
	fmt.Fprintln(os.Stderr, "to-stderr")
	code, _ := strconv.Atoi(os.Args[2])
	os.Exit(code)
}

// trap prints "ready", then "usr1" for every SIGUSR1, and exits 3 on
// SIGTERM. As PID 1 of a namespace it would ignore signals it does not
// handle, so it handles the ones the tests send.
func trap() {
	c := make(chan os.Signal, 4)
	signal.Notify(c, syscall.SIGUSR1, syscall.SIGTERM)
	fmt.Println("ready")
	for s := range c {
		if s == syscall.SIGTERM {
			os.Exit(3)
		}
		fmt.Println("usr1")
	}
}

// tick prints a line every 10ms until it is killed.
func tick() {
	for {
		fmt.Println("t")
		time.Sleep(10 * time.Millisecond)
	}
}

// tty reports whether stdin is a terminal and its size, then echoes a
// line it reads.
func tty() {
	ws, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ)
	if err != nil {
		fmt.Printf("tty=false %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("tty=true size=%dx%d\n", ws.Col, ws.Row)
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	fmt.Printf("got=%s\n", strings.TrimSpace(line))
}

// syscalls makes system calls a seccomp filter can refuse, under /tmp, and
// prints how each went: "ok" or the errno's name.
func syscalls() {
	result := func(err error) string {
		if err == nil {
			return "ok"
		}
		if errno, ok := err.(syscall.Errno); ok {
			return unix.ErrnoName(errno)
		}
		return err.Error()
	}
	fmt.Printf("mkdir=%s\n", result(unix.Mkdirat(unix.AT_FDCWD, "/tmp/dir", 0o755)))
	if err := os.WriteFile("/tmp/file", nil, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(100)
	}
	fmt.Printf("chmod644=%s\n", result(unix.Fchmodat(unix.AT_FDCWD, "/tmp/file", 0o644, 0)))
	fmt.Printf("chmod777=%s\n", result(unix.Fchmodat(unix.AT_FDCWD, "/tmp/file", 0o777, 0)))
}
