package container

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pipes are a container process's stdio as the agent gives it: the child
// ends go to cabin-runtime as fds 3, 4 and 5, the test keeps the others.
type pipes struct {
	stdin          *os.File
	stdout, stderr *lines
	child          []*os.File
}

func newPipes(t *testing.T) *pipes {
	t.Helper()
	var p pipes
	inR, inW := pipe(t)
	outR, outW := pipe(t)
	errR, errW := pipe(t)
	p.stdin = inW
	p.stdout, p.stderr = newLines(outR), newLines(errR)
	p.child = []*os.File{inR, outW, errW}
	return &p
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// handedOver closes the test's copies of the child ends once the runtime
// has passed them on, so that the process's exit ends its output.
func (p *pipes) handedOver() {
	for _, f := range p.child {
		f.Close()
	}
}

// lines reads a process's output line by line, with deadlines.
type lines struct {
	f *os.File
	r *bufio.Reader
}

func newLines(f *os.File) *lines { return &lines{f: f, r: bufio.NewReader(f)} }

// next returns the next line, or fails the test after timeout.
func (l *lines) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	l.f.SetReadDeadline(time.Now().Add(timeout))
	s, err := l.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read %s: %v (got %q)", l.f.Name(), err, s)
	}
	return strings.TrimSuffix(s, "\n")
}

// expect fails the test unless the next line is want.
func (l *lines) expect(t *testing.T, want string) {
	t.Helper()
	if got := l.next(t, 5*time.Second); got != want {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// quiet fails the test if a line arrives within d.
func (l *lines) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	l.f.SetReadDeadline(time.Now().Add(d))
	s, err := l.r.ReadString('\n')
	if err == nil || s != "" {
		t.Fatalf("read %q (%v), want nothing for %v", s, err, d)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want a timeout", err)
	}
}

// drain discards what is buffered or arrives within d.
func (l *lines) drain(d time.Duration) {
	l.f.SetReadDeadline(time.Now().Add(d))
	io.Copy(io.Discard, l.r)
}

// all reads to EOF, or fails the test after timeout.
func (l *lines) all(t *testing.T, timeout time.Duration) string {
	t.Helper()
	l.f.SetReadDeadline(time.Now().Add(timeout))
	data, err := io.ReadAll(l.r)
	if err != nil {
		t.Fatalf("read %s: %v (got %q)", l.f.Name(), err, data)
	}
	return string(data)
}

// consoleSocket is a connected unix socket pair: the runtime gets one end
// as fd 3 with --terminal, the test receives the terminal's master on the
// other.
func consoleSocket(t *testing.T) (ours, theirs *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs = os.NewFile(uintptr(fds[0]), "console-ours"), os.NewFile(uintptr(fds[1]), "console-theirs")
	t.Cleanup(func() { ours.Close(); theirs.Close() })
	return ours, theirs
}

// receiveMaster receives the one descriptor libcontainer sends on the
// console socket and returns it as a pollable file.
func receiveMaster(t *testing.T, sock *os.File) *os.File {
	t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("receive the terminal: %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("receive the terminal: %d control messages (%v)", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("receive the terminal: %d descriptors (%v)", len(fds), err)
	}
	// Non-blocking, so that os.File polls it and reads can time out.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	master := os.NewFile(uintptr(fds[0]), string(buf[:n]))
	t.Cleanup(func() { master.Close() })
	return master
}

// readUntil reads from f until what it read contains want.
func readUntil(t *testing.T, f *os.File, want string) string {
	t.Helper()
	f.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 256)
	for !strings.Contains(string(got), want) {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read the terminal: %v (got %q, want %q)", err, got, want)
		}
	}
	return string(got)
}
