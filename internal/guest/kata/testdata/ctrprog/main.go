// Command ctrprog is the process the container tests run: a static
// program, so that a root filesystem needs nothing else. Its first
// argument says what to do.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ctrprog write N | stderr MSG | cat | sleep | trap | tty | exit N")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "write":
		// N bytes of a pattern, then exit at once: what is in flight
		// must still reach the reader.
		n, _ := strconv.Atoi(os.Args[2])
		os.Stdout.Write(Pattern(n))
	case "stderr":
		fmt.Fprint(os.Stderr, os.Args[2])
		os.Exit(3)
	case "cat":
		io.Copy(os.Stdout, os.Stdin)
		fmt.Println("eof")
	case "sleep":
		// SIGTERM not handled (Go's runtime would catch it, and exit on
		// it): as a pid namespace's init, such a process never ends on
		// SIGTERM.
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		for {
			time.Sleep(time.Hour)
		}
	case "trap":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		fmt.Println("ready")
		<-ch
		fmt.Println("term")
		os.Exit(7)
	case "tty":
		tty()
	case "exit":
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(n)
	}
}

// tty reports its terminal, the size changes it is told of, and the lines
// typed until EOF.
func tty() {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	_, err := unix.IoctlGetTermios(0, unix.TCGETS)
	// The terminal turns "\n" into "\r\n".
	fmt.Printf("tty %v size %s\n", err == nil, size())
	fmt.Println("ready")
	go func() {
		for range winch {
			fmt.Printf("size %s\n", size())
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Printf("line %q\n", sc.Text())
	}
	fmt.Println("bye")
}

func size() string {
	ws, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d %d", ws.Row, ws.Col)
}

// Pattern is n bytes of numbered lines, the same for the test to compare.
func Pattern(n int) []byte {
	b := make([]byte, 0, n+32)
	for i := 0; len(b) < n; i++ {
		b = fmt.Appendf(b, "%08d\n", i)
	}
	return b[:n]
}
