package kata

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// startTTY runs script on a new terminal whose master it sends over the
// console socket, as the runtime does with --terminal.
func startTTY(t *testing.T, r *reaper.Reaper, script string) *process {
	t.Helper()
	io, err := newStdio(true)
	if err != nil {
		t.Fatal(err)
	}
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	slave, err := os.OpenFile(name, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := io.child[0]
	if err := unix.Sendmsg(int(sock.Fd()), []byte(name), unix.UnixRights(mfd), nil, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(mfd)
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	pid, exits, err := r.StartCmd(cmd)
	slave.Close()
	io.closeChild()
	if err != nil {
		t.Fatal(err)
	}
	p, err := newProcess("tty", pid, false, io, exits, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.release)
	return p
}

func TestTerminal(t *testing.T) {
	r := startReaper(t)
	p := startTTY(t, r, "stty -echo; echo ready; read line; stty size; cat; echo done; exit 5")
	if p.stdout != p.stderr {
		t.Error("stdout and stderr are not the terminal both")
	}
	var out strings.Builder
	for !strings.Contains(out.String(), "ready") {
		b, err := p.stderr.Read(t.Context(), 0)
		if err != nil || len(b) == 0 {
			t.Fatalf("read %q so far, then %q, %v", out.String(), b, err)
		}
		out.Write(b)
	}
	if err := p.resize(30, 100); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"go\n", "abc\n"} {
		if _, err := p.stdin.Write(t.Context(), []byte(in)); err != nil {
			t.Fatal(err)
		}
	}
	// The terminal's EOF ends cat.
	if err := p.stdin.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	out.Write(readAllOut(t, p.stdout, 7))
	if got := out.String(); !strings.Contains(got, "30 100\r\n") || !strings.Contains(got, "abc\r\n") || !strings.HasSuffix(got, "done\r\n") {
		t.Errorf("terminal output %q", got)
	}
	if e := waitExit(t, p); e.Code != 5 {
		t.Errorf("exit %+v", e)
	}
	if err := p.resize(10, 10); err != nil {
		t.Errorf("resize after exit: %v", err)
	}
	if _, err := p.stdin.Write(t.Context(), []byte("x")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("stdin after exit: %v", err)
	}
}

// TestTerminalOutputNotLost: a process that writes much to its terminal
// and exits at once loses none of it.
func TestTerminalOutputNotLost(t *testing.T) {
	r := startReaper(t)
	// More than the terminal holds: read as it comes.
	p := startTTY(t, r, "stty -onlcr; head -c 500000 /dev/zero | tr '\\0' 'y'")
	if out := readAllOut(t, p.stdout, 0); len(out) != 500000 {
		t.Errorf("read %d bytes of 500000", len(out))
	}
	waitExit(t, p)
	// What it holds, read after the exit.
	q := startTTY(t, r, "stty -onlcr; head -c 3000 /dev/zero | tr '\\0' 'y'")
	waitExit(t, q)
	if out := readAllOut(t, q.stdout, 0); len(out) != 3000 {
		t.Errorf("read %d bytes of 3000 after the exit", len(out))
	}
}

func TestResizeWithoutTerminal(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "exit 0")
	if err := p.resize(1, 1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("resize of a pipe: %v", err)
	}
}
