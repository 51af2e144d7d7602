package execsvc

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
	"github.com/cabinvm/cabin/internal/guest/ttyio"
	"github.com/cabinvm/cabin/internal/reaper"
)

// defaultTerm is TERM on a terminal when the client sets none: the agent's
// own TERM, if any, describes the guest console, not the client's terminal.
const defaultTerm = "xterm-256color"

// maxSignal is SIGRTMAX on Linux.
const maxSignal = 64

// Spec is a process to start.
type Spec struct {
	// Argv[0] is an absolute path, a path relative to Dir, or a name looked
	// up in the agent's PATH.
	Argv []string
	// Env is added to the agent's environment, replacing its values.
	Env map[string]string
	// Dir is the absolute working directory; empty means /.
	Dir string
	// TTY runs the process on a new pseudo-terminal as a session leader.
	TTY bool
	// Window is the initial terminal size, with TTY; zero leaves it unset.
	Window Window
	// Stdin attaches the process's stdin; without it stdin is /dev/null.
	Stdin bool
	// User is who runs the process (NAME, UID, NAME:GROUP or UID:GID);
	// empty means the agent's own user, root.
	User string
}

// Window is a terminal size in character cells.
type Window struct{ Rows, Cols uint16 }

// Stream names an output stream.
type Stream int

const (
	// Stdout carries all output with a tty.
	Stdout Stream = iota + 1
	// Stderr never appears with a tty: the terminal carries both.
	Stderr
)

// Chunk is one read of output. Its Data is lent: call Release once done
// with it (a sent gRPC message is), and the buffer serves a later read.
type Chunk struct {
	Stream Stream
	Data   []byte
	buf    *[]byte
}

// Release returns the chunk's buffer for reuse; Data must not be used
// after. Output that is not released is simply collected.
func (c Chunk) Release() {
	if c.buf != nil {
		chunks.Put(c.buf)
	}
}

// chunks holds read buffers. Output is read into one and handed on as it
// is, without a copy; reusing the buffers spares the guest's collector a
// chunkSize allocation per read, which under emulation made the collector
// most of the cost of streaming output.
var chunks = sync.Pool{New: func() any {
	b := make([]byte, chunkSize)
	return &b
}}

// Process is a started process and its stdio. Its output arrives on Output,
// which closes only once the process has exited and its output is drained;
// Wait returns right after.
type Process struct {
	pid int
	tty bool
	log *slog.Logger

	// stdin is the stdin pipe's write end, or the master with a tty; nil
	// when stdin is not attached.
	stdin *os.File
	// slave is the terminal's slave end, held until the process exits (see
	// monitor).
	slave *os.File
	// readers are the output ends the pumps read: stdout and stderr pipes,
	// or the master.
	readers []*os.File

	out   chan Chunk
	pumps sync.WaitGroup
	abort chan struct{} // closed by Kill: stop pumping, drop output
	done  chan struct{} // closed when all is released; the exit is then known

	// guard holds the exit, once the reaper reports it, and orders
	// signals, deadlines and Kill against it, so that no signal goes to a
	// reaped (and perhaps reused) pid. aborted is under its lock.
	guard   *reaper.Guard
	aborted bool

	// stdinClosed is set by CloseStdin on a pipe: stdin after it is the
	// client's mistake, while stdin after the exit is only too late.
	stdinClosed atomic.Bool

	// sess is the cgroup the process was started in, or nil; its owner
	// removes it.
	sess *cgroup.Session
}

// Start starts the process described by spec; r reaps it. With sess the
// process starts in that cgroup (so does everything it starts), which
// Kill kills; the caller keeps it, and removes it after Wait.
func Start(r *reaper.Reaper, spec Spec, log *slog.Logger, sess *cgroup.Session) (*Process, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	// Checked here and not left to the child's chdir, whose failure would
	// read like a missing binary.
	if fi, err := os.Stat(dir); err != nil {
		return nil, &StartError{126, classify("cwd "+dir, err)}
	} else if !fi.IsDir() {
		return nil, &StartError{126, classify("cwd "+dir, syscall.ENOTDIR)}
	}
	var acct *account
	if spec.User != "" {
		a, err := lookupAccount(spec.User)
		if err != nil {
			return nil, &StartError{126, err}
		}
		acct = &a
	}
	path, err := resolve(spec.Argv[0])
	if err != nil {
		return nil, commandFailed(err)
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: spec.Argv,
		Env:  environ(spec),
		Dir:  dir,
	}
	if acct != nil {
		cmd.Env = acct.environ(cmd.Env, spec.Env)
	}
	p := &Process{
		tty:   spec.TTY,
		log:   log,
		out:   make(chan Chunk),
		abort: make(chan struct{}),
		done:  make(chan struct{}),
		sess:  sess,
	}
	// child holds the ends that are the child's; the parent closes them
	// once it has started (or failed to).
	var child []*os.File
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	fail := func(err error) (*Process, error) {
		// With a tty, stdin is the master and among the readers.
		for _, f := range append(p.readers, p.slave) {
			if f != nil {
				f.Close()
			}
		}
		if !p.tty && p.stdin != nil {
			p.stdin.Close()
		}
		return nil, err
	}
	if spec.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, err
		}
		p.readers, p.slave = []*os.File{master}, slave
		if spec.Window != (Window{}) {
			if err := ttyio.SetWinsize(master, spec.Window.Rows, spec.Window.Cols); err != nil {
				return fail(fmt.Errorf("set window size: %w", err))
			}
		}
		// The terminal is all three, as with docker's -t: without
		// Stdin nothing is typed into it, but the process still sees a
		// terminal to read from. Ctty is a descriptor number in the child.
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		if spec.Stdin {
			p.stdin = master
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else {
		// readers[0] is stdout, readers[1] stderr.
		for range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(fmt.Errorf("output pipe: %w", err))
			}
			p.readers, child = append(p.readers, r), append(child, w)
		}
		cmd.Stdout, cmd.Stderr = child[0], child[1]
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(fmt.Errorf("stdin pipe: %w", err))
			}
			p.stdin, child, cmd.Stdin = w, append(child, r), r
		}
		// Its own group, so that Kill reaches whatever it started too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if acct != nil {
		cmd.SysProcAttr.Credential = acct.credential()
	}
	if sess != nil {
		// Born in the cgroup (clone3's CLONE_INTO_CGROUP), not moved
		// there after: nothing it forks can get away first.
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, sess.FD()
	}
	// With a nil Stdin exec.Cmd opens /dev/null itself and closes it in
	// Start. Every other stdio is an *os.File, so Start spawns no copying
	// goroutine that only Wait would end.
	pid, exits, err := r.StartCmd(cmd)
	if err != nil {
		return fail(commandFailed(classify("start "+spec.Argv[0], err)))
	}
	p.pid, p.guard = pid, reaper.NewGuard(pid)
	for i, f := range p.readers {
		s := Stdout
		if i == 1 {
			s = Stderr
		}
		p.pumps.Add(1)
		go p.pump(f, s)
	}
	go p.monitor(exits)
	return p, nil
}

func (s Spec) validate() error {
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return errdefs.InvalidArgument("argv", "must not be empty")
	}
	for _, a := range s.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return errdefs.InvalidArgument("argv", "contains a NUL byte")
		}
	}
	if s.User != "" {
		if err := checkUser(s.User); err != nil {
			return err
		}
	}
	if s.Dir != "" && !filepath.IsAbs(s.Dir) {
		return errdefs.InvalidArgument("cwd", fmt.Sprintf("%q is not an absolute path", s.Dir))
	}
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return errdefs.InvalidArgument("env", fmt.Sprintf("%q is not a valid variable", k))
		}
	}
	return nil
}

// resolve finds argv[0]. Names without a slash are looked up in the agent's
// PATH, not in a PATH the client sets: the client's PATH applies to what
// the process itself runs.
func resolve(name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return "", classify("start "+name, err)
	}
	return path, nil
}

// environ is the agent's environment with spec.Env over it. Later entries
// win in exec.Cmd, so appending is enough; sorting keeps it reproducible.
func environ(spec Spec) []string {
	env := os.Environ()
	keys := make([]string, 0, len(spec.Env))
	for k := range spec.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = append(env, k+"="+spec.Env[k])
	}
	if _, ok := spec.Env["TERM"]; spec.TTY && !ok {
		env = append(env, "TERM="+defaultTerm)
	}
	return env
}

// classify gives a failure to start its category. The cause is cut to its
// core (the errno, not "fork/exec path: errno"), as what names the path.
func classify(what string, err error) error {
	var pe *fs.PathError
	var ee *exec.Error
	switch {
	case errors.As(err, &pe):
		err = pe.Err
	case errors.As(err, &ee):
		err = ee.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, exec.ErrNotFound):
		return errdefs.Errorf(errdefs.ErrNotFound, "%s: %w", what, err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC),
		errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR),
		errors.Is(err, exec.ErrDot):
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// commandFailed is a StartError for a command that was not found (127) or
// could not be run (126).
func commandFailed(err error) error {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return &StartError{127, err}
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		return &StartError{126, err}
	}
	return err
}

// Pid is the process id.
func (p *Process) Pid() int { return p.pid }

// Output delivers the process's output in order per stream, unbuffered, so
// a slow reader slows the process. It is closed after the exit, once
// everything the process wrote has been delivered.
func (p *Process) Output() <-chan Chunk { return p.out }

// Wait returns the exit once the process has exited and its output is
// drained and its descriptors closed.
func (p *Process) Wait(ctx context.Context) (reaper.Exit, error) {
	select {
	case <-p.done:
		e, _ := p.guard.Exit()
		return e, nil
	case <-ctx.Done():
		return reaper.Exit{}, ctx.Err()
	}
}

// WriteStdin writes b to the process's stdin, blocking while the process
// does not read. Input that arrives after the process exited, or closed its
// stdin, is dropped.
func (p *Process) WriteStdin(b []byte) error {
	if p.stdin == nil {
		return errdefs.InvalidArgument("stdin", "not attached: start.stdin was not set")
	}
	if p.stdinClosed.Load() {
		return errdefs.InvalidArgument("stdin", "sent after close_stdin")
	}
	if _, err := p.stdin.Write(b); err != nil {
		// EPIPE: nobody reads it any more; closed or past its deadline: the
		// process exited (see monitor).
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) ||
			errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.EIO) {
			p.log.Debug("stdin dropped", "pid", p.pid, "bytes", len(b), "err", err)
			return nil
		}
		return fmt.Errorf("write stdin: %w", err)
	}
	return nil
}

// CloseStdin ends the process's input. On a pipe it closes the pipe; the
// process reads EOF. On a terminal it types the EOF character (^D), as a
// user at the terminal would: a process reading a line in canonical mode
// reads EOF, or the partial line typed so far (a second CloseStdin then
// gives EOF); the terminal stays open and more stdin may follow.
func (p *Process) CloseStdin() error {
	if p.stdin == nil {
		return nil
	}
	if !p.tty {
		p.stdinClosed.Store(true)
		if err := p.stdin.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("close stdin: %w", err)
		}
		return nil
	}
	return p.WriteStdin([]byte{ttyio.EOFChar(p.stdin)})
}

// Resize sets the terminal size.
func (p *Process) Resize(w Window) error {
	if !p.tty {
		return errdefs.InvalidArgument("resize", "the process has no tty")
	}
	// After the exit the master is being drained and then closed.
	return p.guard.Do(func() error {
		if err := ttyio.SetWinsize(p.readers[0], w.Rows, w.Cols); err != nil {
			return fmt.Errorf("resize: %w", err)
		}
		return nil
	})
}

// Signal sends sig to the process, or with a tty to its process group (the
// session it leads). A signal after the exit is dropped.
func (p *Process) Signal(sig syscall.Signal) error {
	if sig <= 0 || sig > maxSignal {
		return errdefs.InvalidArgument("signal", fmt.Sprintf("%d is not a signal number", int(sig)))
	}
	if p.tty {
		return p.guard.SignalGroup(sig)
	}
	return p.guard.Signal(sig)
}

// Kill abandons the process: SIGKILL to its process group and its
// session's cgroup, and its output is dropped. Wait then returns soon,
// once the reaper has it.
func (p *Process) Kill() {
	p.guard.Locked(func(exited bool) {
		if p.aborted {
			return
		}
		p.aborted = true
		close(p.abort)
		if !exited {
			p.signalGroup(unix.SIGKILL)
		} else {
			// What it started may still run; the cgroup holds no pid
			// that could have been reused.
			p.killSession()
		}
		// Wake pumps blocked in Read at once.
		for _, f := range p.readers {
			f.SetReadDeadline(time.Now())
		}
	})
}

// SignalGroup sends sig to the process and what it started, as Kill does,
// but leaves its output flowing: the process may still say how it ended.
// A signal after the exit is dropped.
func (p *Process) SignalGroup(sig syscall.Signal) {
	p.guard.Do(func() error {
		p.signalGroup(sig)
		return nil
	})
}

// signalGroup does SignalGroup's work under the guard's lock, before the
// exit. The group is the process's own (Setpgid or Setsid), so it reaches
// what the process started unless that left the group; the pid itself is
// signalled in case it left the group. SIGKILL also goes to the session's
// cgroup, which nothing leaves.
func (p *Process) signalGroup(sig syscall.Signal) {
	if err := reaper.KillGroup(p.pid, sig); err != nil {
		p.log.Warn("signal", "pid", -p.pid, "signal", sig, "err", err)
	}
	if err := reaper.Kill(p.pid, sig); err != nil {
		p.log.Warn("signal", "pid", p.pid, "signal", sig, "err", err)
	}
	if sig == unix.SIGKILL {
		p.killSession()
	}
}

// killSession kills every process in the session's cgroup, if there is
// one.
func (p *Process) killSession() {
	if p.sess == nil {
		return
	}
	if err := p.sess.Kill(); err != nil {
		p.log.Warn("kill session", "cgroup", p.sess.Dir(), "err", err)
	}
}

// hasExited tells whether the exit is known; see reaper.Guard.Exited.
func (p *Process) hasExited() bool { return p.guard.Exited() }

// monitor waits for the exit, then lets the pumps drain and releases
// everything.
//
// A terminal's master reads EIO once no slave is open, and can do so
// before the last output is read when the slave closes as the child exits.
// So the agent holds its own slave open until the reaper reports the exit;
// only then is it closed and the master read to EIO. Pipes reach EOF when
// the last writer is gone. Descendants that keep the slave or the pipes
// open would hold the stream forever, so the pumps also stop when the
// output has been idle for drainGrace after the exit (see pump).
func (p *Process) monitor(exits <-chan reaper.Exit) {
	e := p.guard.Watch(exits, func(reaper.Exit) {
		if p.slave != nil {
			p.slave.Close()
		}
		if p.stdin != nil {
			if p.tty {
				// The master is also the output: wake a blocked stdin write only.
				p.stdin.SetWriteDeadline(time.Now())
			} else {
				p.stdin.Close()
			}
		}
		// Wake pumps blocked in Read, so that they start the drain (see pump).
		for _, f := range p.readers {
			f.SetReadDeadline(time.Now())
		}
	})
	p.log.Debug("exited", "exit", e.String())

	p.pumps.Wait()
	close(p.out)
	for _, f := range p.readers {
		f.Close()
	}
	close(p.done)
}
