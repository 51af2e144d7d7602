// Command cabin-netperf is the bench's TCP measuring program: a server, run
// in a guest or in a network namespace of the host, and its clients, run
// in a namespace of the host, each printing its figures as one JSON line.
// It is static (CGO_ENABLED=0) so that the same binary runs in the guest.
//
//	cabin-netperf serve -addr ADDR [-wait 60s]
//	cabin-netperf send -addr ADDR -for 2s     # client → server throughput
//	cabin-netperf recv -addr ADDR -for 2s     # server → client throughput
//	cabin-netperf connect -addr ADDR -n 20    # connect + 1-byte round trip, each
//	cabin-netperf wait -addr ADDR -for 60s    # until a connection is answered
//
// A connection starts with one byte naming what the server does: opSink
// reads to EOF and answers with the count, as 8 bytes; opSource writes
// until the client goes; opPing answers one byte, then waits for EOF.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

const (
	opSink   = 's'
	opSource = 'g'
	opPing   = 'p'
)

// bufSize is the size of each write and read.
const bufSize = 256 << 10

// slack bounds a transfer beyond its own duration: what a server that
// stopped answering gets before the client gives up.
const slack = 30 * time.Second

// transfer is what send and recv print.
type transfer struct {
	Bytes int64 `json:"bytes"`
	NS    int64 `json:"ns"`
}

// setups is what connect prints: each connection's time, in nanoseconds.
type setups struct {
	NS []int64 `json:"ns"`
}

func main() {
	if len(os.Args) < 2 {
		fatal(errors.New("usage: cabin-netperf serve|send|recv|connect|wait -addr ADDR [flags]"))
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "", "host:port to listen on (serve) or connect to")
	d := fs.Duration("for", 2*time.Second, "how long to transfer (send, recv) or to wait (serve, wait)")
	n := fs.Int("n", 20, "connections (connect)")
	fs.Parse(os.Args[2:])
	if *addr == "" {
		fatal(errors.New("-addr is required"))
	}
	var (
		out any
		err error
	)
	switch os.Args[1] {
	case "serve":
		err = serve(*addr, *d)
	case "send":
		out, err = send(*addr, *d)
	case "recv":
		out, err = recv(*addr, *d)
	case "connect":
		out, err = connect(*addr, *n)
	case "wait":
		err = wait(*addr, *d)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fatal(err)
	}
	if out != nil {
		json.NewEncoder(os.Stdout).Encode(out)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "cabin-netperf:", err)
	os.Exit(1)
}

// serve listens on addr, trying again for up to wait while the address is
// not there yet (a guest whose network is still being configured), and
// serves until killed.
func serve(addr string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var (
		ln  net.Listener
		err error
	)
	for {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go handle(c.(*net.TCPConn))
	}
}

func handle(c *net.TCPConn) {
	defer c.Close()
	op := make([]byte, 1)
	if _, err := io.ReadFull(c, op); err != nil {
		return
	}
	switch op[0] {
	case opSink:
		// Reads of bufSize, as the clients' (io.Copy to io.Discard would
		// read 8 KiB at a time).
		buf := make([]byte, bufSize)
		var total int64
		for {
			n, err := c.Read(buf)
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(total)))
	case opSource:
		buf := make([]byte, bufSize)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case opPing:
		if _, err := c.Write(op); err != nil {
			return
		}
		io.Copy(io.Discard, c)
	}
}

// send writes to the server for d, then half-closes and waits for the
// server's count: the time is until every byte has arrived.
func send(addr string, d time.Duration) (*transfer, error) {
	c, err := dial(addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d + slack))
	buf := make([]byte, bufSize)
	buf[0] = opSink
	start := time.Now()
	if _, err := c.Write(buf[:1]); err != nil {
		return nil, err
	}
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
	}
	if err := c.CloseWrite(); err != nil {
		return nil, err
	}
	var count [8]byte
	if _, err := io.ReadFull(c, count[:]); err != nil {
		return nil, fmt.Errorf("the server's count: %w", err)
	}
	return &transfer{Bytes: int64(binary.BigEndian.Uint64(count[:])), NS: time.Since(start).Nanoseconds()}, nil
}

// recv asks the server to write and reads for d.
func recv(addr string, d time.Duration) (*transfer, error) {
	c, err := dial(addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d + slack))
	start := time.Now()
	if _, err := c.Write([]byte{opSource}); err != nil {
		return nil, err
	}
	buf := make([]byte, bufSize)
	var total int64
	for time.Since(start) < d {
		n, err := c.Read(buf)
		total += int64(n)
		if err != nil {
			return nil, err
		}
	}
	return &transfer{Bytes: total, NS: time.Since(start).Nanoseconds()}, nil
}

// connect times n connections, each to the answer of its first byte. Each
// is then closed and its end waited for, outside the time, so that one
// connection's tear-down does not fall in the next one's time.
func connect(addr string, n int) (*setups, error) {
	out := &setups{}
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := dial(addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(start.Add(slack))
		b := []byte{opPing}
		if _, err := c.Write(b); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return nil, fmt.Errorf("the server's answer: %w", err)
		}
		out.NS = append(out.NS, time.Since(start).Nanoseconds())
		c.CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}
	return out, nil
}

// wait tries a round trip every 100 ms until one succeeds or d has passed.
func wait(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := connect(addr, 1)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dial(addr string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, slack)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
