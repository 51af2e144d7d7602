package kata

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/ttyio"
	"github.com/cabinvm/cabin/internal/reaper"
)

// maxSignal is SIGRTMAX on Linux.
const maxSignal = 64

// lostExitCode is the status reported for a process whose exit the reaper
// no longer kept when the agent claimed it (see reaper.Claim): it did
// exit, but how is unknown.
const lostExitCode = 255

// process is a container's process: its init or one exec'd in it. Its
// pid is a child of PID 1's (the runtime that started it has exited), and
// its exit comes from the reaper.
type process struct {
	id   string // exec id; the container's id for the init
	pid  int
	init bool
	tty  bool
	log  *slog.Logger

	stdin *inStream
	// stdout and stderr are the same stream with a terminal.
	stdout, stderr *outStream

	// guard holds the exit, once the reaper reports it, and orders
	// signals and resizes against it, so that none goes to a reaped (and
	// perhaps reused) pid. What follows is under its lock.
	guard *reaper.Guard
	// slave is the terminal's slave, held until the exit is known (see
	// outStream).
	slave  *os.File
	closed bool // released

	// Under Sandbox.mu: waited for, so forgotten but for its output.
	waited bool
}

// stdio is a process's stdio while the runtime starts it: the runtime's
// ends (its fds 3, 4 and 5, or the console socket as fd 3) and the
// agent's.
type stdio struct {
	tty     bool
	child   []*os.File
	stdin   *os.File // write end
	stdout  *os.File // read ends
	stderr  *os.File
	console *consoleSocket
}

func newStdio(tty bool) (_ *stdio, err error) {
	s := &stdio{tty: tty}
	defer func() {
		if err != nil {
			s.closeChild()
			s.abort()
		}
	}()
	if tty {
		sock, theirs, err := newConsoleSocket()
		if err != nil {
			return nil, err
		}
		s.console, s.child = sock, []*os.File{theirs}
		return s, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	s.stdin, s.child = w, append(s.child, r)
	for _, end := range []**os.File{&s.stdout, &s.stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("output pipe: %w", err)
		}
		enlargePipe(r)
		*end, s.child = r, append(s.child, w)
	}
	return s, nil
}

// closeChild closes the agent's copies of the runtime's ends, once the
// runtime has run: the process holds its own, and a pipe reaches EOF only
// once no write end is left.
func (s *stdio) closeChild() {
	for _, f := range s.child {
		f.Close()
	}
	s.child = nil
}

// abort closes the agent's ends, for a process that did not start.
func (s *stdio) abort() {
	for _, f := range []*os.File{s.stdin, s.stdout, s.stderr} {
		if f != nil {
			f.Close()
		}
	}
	if s.console != nil {
		s.console.Close()
	}
}

// newProcess makes the process the runtime has started as pid, taking
// over io: with a terminal it receives the master first. It fails only
// then, having closed io; the process is the caller's to end.
func newProcess(id string, pid int, init bool, io *stdio, exits <-chan reaper.Exit, log *slog.Logger) (*process, error) {
	if pid <= 1 {
		io.abort()
		return nil, fmt.Errorf("process %q: %d is not its pid", id, pid)
	}
	p := &process{id: id, pid: pid, init: init, tty: io.tty, log: log, guard: reaper.NewGuard(pid)}
	if io.tty {
		master, err := io.console.receive()
		io.console.Close()
		if err != nil {
			return nil, err
		}
		if p.slave, err = openPeer(master); err != nil {
			// Only the drain loses from it: a master can read EIO
			// before the last output on old kernels.
			log.Debug("no hold on the terminal", "pid", pid, "err", err)
		}
		p.stdin = newInStream(master, true)
		p.stdout = newOutStream(master)
		p.stderr = p.stdout
	} else {
		p.stdin = newInStream(io.stdin, false)
		p.stdout = newOutStream(io.stdout)
		p.stderr = newOutStream(io.stderr)
	}
	go p.monitor(exits)
	return p, nil
}

// monitor waits for the exit and passes it on to the streams.
func (p *process) monitor(exits <-chan reaper.Exit) {
	p.guard.Watch(exits, func(e reaper.Exit) {
		// The terminal's output now ends when its last other holder goes.
		if p.slave != nil {
			p.slave.Close()
			p.slave = nil
		}
		p.stdin.exit()
		p.stdout.exit()
		p.stderr.exit()
		p.log.Debug("container process exited", "exec_id", p.id, "exit", e.String())
	})
}

// exited tells whether the exit is known; see reaper.Guard.Exited.
func (p *process) exited() bool { return p.guard.Exited() }

// wait waits for the exit.
func (p *process) wait(ctx context.Context) (reaper.Exit, error) {
	return p.guard.Wait(ctx)
}

// signal sends sig to the process; after its exit, nothing (upstream:
// ESRCH is not an error). An init that does not catch SIGTERM gets
// SIGKILL instead: in its own pid namespace, the kernel drops signals it
// has no handler for, and SIGTERM would do nothing.
//
// The handler is looked up under the guard's lock too: after the reap,
// /proc/PID/status may be another process's.
func (p *process) signal(sig syscall.Signal) error {
	return p.guard.Do(func() error {
		if p.init && sig == unix.SIGTERM && !catches(p.pid, sig) {
			p.log.Debug("init does not catch SIGTERM; sending SIGKILL", "pid", p.pid)
			sig = unix.SIGKILL
		}
		return reaper.Kill(p.pid, sig)
	})
}

// catches tells whether pid has a handler for sig (SigCgt in
// /proc/PID/status). When that cannot be read, it answers yes: the
// signal is then sent as asked.
func catches(pid int, sig syscall.Signal) bool {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return true
}

// resize sets the terminal's size; after the exit, nothing.
func (p *process) resize(rows, cols uint16) error {
	if !p.tty {
		return fmt.Errorf("process %q has no terminal: %w", p.id, errdefs.ErrFailedPrecondition)
	}
	return p.guard.Do(func() error {
		if p.closed {
			return nil
		}
		if err := ttyio.SetWinsize(p.stdout.f, rows, cols); err != nil {
			return fmt.Errorf("resize the terminal: %w", err)
		}
		return nil
	})
}

// release closes the agent's ends of the process's stdio; reads and
// writes in progress return.
func (p *process) release() {
	p.guard.Locked(func(bool) {
		if p.closed {
			return
		}
		p.closed = true
		if p.slave != nil {
			p.slave.Close()
			p.slave = nil
		}
		p.stdin.close()
		p.stdout.close()
		p.stderr.close()
	})
}

// readPid reads a pid file the runtime wrote.
func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, b)
	}
	return pid, nil
}

// checkAdopted makes sure the process the runtime started, now that the
// runtime has exited, is this process's child: the reaper can only wait
// for its own. It is when the agent is PID 1 or a child subreaper (as the
// tests make themselves); otherwise the process went to another, and its
// exit would never come.
func checkAdopted(pid int) error {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		// Gone already: reaped, by this process since nobody else could.
		return nil
	}
	// The command name may hold anything; fields resume after its last ")".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	if ppid, err := strconv.Atoi(f[1]); err != nil || ppid != os.Getpid() {
		return fmt.Errorf("container process %d is the child of %s, not of the agent: run the agent as PID 1 or a child subreaper: %w",
			pid, f[1], errdefs.ErrFailedPrecondition)
	}
	return nil
}

// claim asks the reaper for pid's exit. A lost exit (see reaper.Claim) is
// reported as lostExitCode: the process is gone, and waiting forever for
// it would be worse.
func claim(r *reaper.Reaper, pid int, log *slog.Logger) (<-chan reaper.Exit, error) {
	exits, err := r.Claim(pid)
	if errors.Is(err, reaper.ErrExitLost) {
		log.Warn("container process exited and its status was lost", "pid", pid)
		ch := make(chan reaper.Exit, 1)
		ch <- reaper.Exit{Pid: pid, Code: lostExitCode}
		return ch, nil
	}
	return exits, err
}
