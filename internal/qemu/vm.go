// Package qemu runs cabin's VMs with qemu-system-x86_64: it builds the
// command line (Cmdline, pure), chooses the accelerator (DetectAccel),
// speaks QMP (Client), and starts, adopts and stops QEMU processes
// (Launcher, implementing hypervisor.Launcher).
//
// QEMU runs daemonized with a pidfile so a VM outlives the daemon that
// started it; a later daemon adopts it from the pidfile, the process start
// time it recorded, and the QMP socket.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// DefaultBinary is the QEMU program Launcher runs when Binary is empty,
// looked up in PATH.
const DefaultBinary = "qemu-system-x86_64"

// procPollInterval is how often a VM's process is checked for exit where
// pidfds are unavailable (kernels before 5.10).
const procPollInterval = 250 * time.Millisecond

// Launcher starts QEMU VMs and adopts running ones.
type Launcher struct {
	// Binary is the QEMU program; DefaultBinary when empty. A name
	// without a slash is looked up in PATH.
	Binary string
	// Log receives the launcher's and its VMs' logs; none when nil.
	Log *slog.Logger
	// TSCKHz is the TSC frequency told to TCG guests (Config.TSCKHz);
	// when zero, the first TCG launch measures it (HostTSCKHz).
	TSCKHz int

	tscOnce     sync.Once
	measuredTSC int
}

var (
	_ hypervisor.Launcher = (*Launcher)(nil)
	_ hypervisor.VM       = (*vm)(nil)
)

// tscKHz is the TSC frequency for TCG guests, 0 when unknown.
func (l *Launcher) tscKHz(log *slog.Logger) int {
	if l.TSCKHz > 0 {
		return l.TSCKHz
	}
	l.tscOnce.Do(func() {
		khz, err := HostTSCKHz()
		if err != nil {
			// The guest calibrates itself, which can hang on a busy host.
			log.Warn("cannot measure the tsc frequency for tcg guests", "err", err)
			return
		}
		log.Info("measured tsc frequency for tcg guests", "khz", khz)
		l.measuredTSC = khz
	})
	return l.measuredTSC
}

func (l *Launcher) logger() *slog.Logger {
	if l.Log != nil {
		return l.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Launch starts QEMU for cfg, paused, in cfg.Dir, which must exist. It
// returns once QEMU has daemonized and its monitor answers; by then QEMU
// has loaded the kernel and initrd, and the caller may close cfg's open
// files. A QEMU that fails to start is reported with its own error
// message, which is also kept in the directory's QEMU log.
func (l *Launcher) Launch(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	log := l.logger().With("vm", cfg.Name, "dir", cfg.Dir.Path())
	qcfg := Config{Config: cfg}
	if cfg.Accel == hypervisor.AccelTCG {
		qcfg.TSCKHz = l.tscKHz(log)
	}
	args, err := Cmdline(qcfg)
	if err != nil {
		return nil, err
	}
	bin := l.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	bin, err = exec.LookPath(bin)
	if err != nil {
		return nil, err
	}
	dir := cfg.Dir
	if err := clearStale(dir, dir.RuntimeFiles()); err != nil {
		return nil, err
	}
	// QEMU writes its errors here before it opens the same file for -D
	// (truncating it), and through -D after it daemonizes: one log per
	// launch. O_APPEND keeps both writers from overwriting each other.
	logFile, err := os.OpenFile(dir.QEMULog(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	log.Debug("starting qemu", "binary", bin, "args", args, "kernel", cfg.Kernel, "initrd", cfg.Initrd)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// The files Cmdline named /proc/self/fd/N, in its order. Only this child
	// inherits them (Go opens files close-on-exec). QEMU's daemon, forked
	// early, inherits them in turn and loads them while setting the
	// machine up, before Run returns; it keeps the descriptors open. The
	// caller's copies stay the caller's.
	cmd.ExtraFiles, _, _ = bootFiles(cfg)
	// With -daemonize this returns when QEMU's first process exits: with
	// status 0 once the VM is set up and its sockets listen, else with
	// QEMU's error on stderr.
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			killStray(dir, log)
			return nil, fmt.Errorf("start qemu: %w", ctx.Err())
		}
		return nil, fmt.Errorf("start qemu: %w: %s", err, logTail(dir.QEMULog()))
	}

	pid, err := readPIDFile(dir.PIDFile())
	if err != nil {
		return nil, err
	}
	v, err := attach(ctx, dir, pid, 0, log)
	if err != nil {
		killStray(dir, log)
		return nil, err
	}
	log.Info("qemu started", "pid", v.pid, "machine", cfg.Machine, "accel", cfg.Accel,
		"cpus", cfg.CPUs, "memory_mib", cfg.MemoryMiB)
	return v, nil
}

// Adopt attaches to the QEMU that an earlier Launch started in dir, if
// the process named by its pidfile still runs, started at startTime, and
// is that directory's QEMU. Otherwise it fails with ErrNotRunning.
func (l *Launcher) Adopt(ctx context.Context, dir statedir.VMDir, startTime uint64) (hypervisor.VM, error) {
	log := l.logger().With("dir", dir.Path())
	pid, err := readPIDFile(dir.PIDFile())
	if errors.Is(err, fs.ErrNotExist) {
		// QEMU removes its pidfile when it exits normally; its monitor's
		// socket stays behind.
		os.Remove(dir.QMPSocket())
		return nil, fmt.Errorf("adopt: no pidfile: %w", hypervisor.ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	v, err := attach(ctx, dir, pid, startTime, log)
	if errors.Is(err, hypervisor.ErrNotRunning) {
		// Gone: what it left is stale (clearStale checks again).
		if cerr := clearStale(dir, ownFiles(dir)); cerr != nil {
			log.Warn("clear what an exited qemu left", "err", cerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	log.Info("qemu adopted", "pid", pid)
	return v, nil
}

// clearStale removes files, which an exited QEMU left in dir, refusing
// when the directory's QEMU still runs. Before a launch they are all the
// runtime files (every socket QEMU listens on, whoever asked for it); once
// a known QEMU is gone, its own (ownFiles).
func clearStale(dir statedir.VMDir, files []string) error {
	if pid, err := readPIDFile(dir.PIDFile()); err == nil {
		if ok, _ := isQEMUFor(pid, dir.PIDFile()); ok {
			return fmt.Errorf("qemu pid %d still runs in %s: %w", pid, dir.Path(), errdefs.ErrAlreadyExists)
		}
	}
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale file: %w", err)
		}
	}
	return nil
}

// killStray kills the QEMU of dir after a launch that failed once QEMU
// may have daemonized, so no paused VM is left behind.
func killStray(dir statedir.VMDir, log *slog.Logger) {
	pid, err := readPIDFile(dir.PIDFile())
	if err != nil {
		return
	}
	if ok, _ := isQEMUFor(pid, dir.PIDFile()); ok {
		log.Warn("killing qemu of a failed launch", "pid", pid)
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// logTail is the end of QEMU's log on one line, for an error message.
func logTail(path string) string {
	const max = 4096
	f, err := os.Open(path)
	if err != nil {
		return "(no qemu log: " + err.Error() + ")"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(qemu log empty)"
	}
	return strings.ReplaceAll(s, "\n", "; ")
}

// attach checks that pid is dir's running QEMU (and, unless wantStart is
// zero, that it started at wantStart), then connects to its monitor.
func attach(ctx context.Context, dir statedir.VMDir, pid int, wantStart uint64, log *slog.Logger) (*vm, error) {
	// Open the pidfd first: the checks below then hold for the process
	// it refers to, even if the pid is reused meanwhile.
	pidfd, err := openPidfd(pid)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*vm, error) {
		if pidfd != nil {
			pidfd.Close()
		}
		return nil, err
	}
	st, err := readProcStat(pid)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && st.State == 'Z') {
		return fail(fmt.Errorf("pid %d exited: %w", pid, hypervisor.ErrNotRunning))
	}
	if err != nil {
		return fail(err)
	}
	if wantStart != 0 && st.StartTime != wantStart {
		return fail(fmt.Errorf("pid %d started at %d, not %d (pid reused): %w",
			pid, st.StartTime, wantStart, hypervisor.ErrNotRunning))
	}
	ok, err := isQEMUFor(pid, dir.PIDFile())
	if errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("pid %d exited: %w", pid, hypervisor.ErrNotRunning))
	}
	if err != nil {
		return fail(err)
	}
	if !ok {
		return fail(fmt.Errorf("pid %d is not the qemu of %s: %w", pid, dir.Path(), hypervisor.ErrNotRunning))
	}
	qmp, err := Dial(ctx, dir.QMPSocket())
	if err != nil {
		return fail(err)
	}
	v := &vm{
		dir:   dir,
		pid:   pid,
		start: st.StartTime,
		qmp:   qmp,
		log:   log.With("pid", pid),
		done:  make(chan struct{}),
		pidfd: pidfd,
		stop:  make(chan struct{}),
	}
	go v.watch()
	go v.logEvents()
	return v, nil
}

// openPidfd returns a pidfd for pid that the Go runtime can poll, nil
// when the kernel offers none, or ErrNotRunning when pid does not exist.
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	switch {
	case err == nil:
		return os.NewFile(uintptr(fd), "pidfd"), nil
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("pid %d: %w", pid, hypervisor.ErrNotRunning)
	default:
		// ENOSYS before Linux 5.3, EINVAL for PIDFD_NONBLOCK before 5.10,
		// or a seccomp filter: fall back to pids and /proc.
		return nil, nil
	}
}

// vm is a QEMU process and its monitor connection. After Close it no
// longer watches the process: Done closes only if the exit was already
// seen.
type vm struct {
	dir   statedir.VMDir
	pid   int
	start uint64
	qmp   *Client
	log   *slog.Logger
	done  chan struct{} // closed when the process has exited

	pidfd     *os.File      // nil without pidfd support
	stop      chan struct{} // closed by Close; stops the /proc poller
	closed    atomic.Bool
	closeOnce sync.Once
}

func (v *vm) PID() int              { return v.pid }
func (v *vm) StartTime() uint64     { return v.start }
func (v *vm) Done() <-chan struct{} { return v.done }

// watch closes v.done when the process exits. QEMU is not our child (it
// daemonized, or an earlier daemon started it), so wait(2) cannot see its
// exit: a pidfd turns readable instead, and the runtime poller waits for
// that without a thread.
func (v *vm) watch() {
	if v.pidfd == nil {
		v.pollProc()
		return
	}
	rc, err := v.pidfd.SyscallConn()
	if err != nil {
		v.pollProc()
		return
	}
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		exited = err == nil && n > 0
		return exited
	})
	if exited {
		v.log.Info("qemu exited")
		close(v.done)
		return
	}
	select {
	case <-v.stop: // Close closed the pidfd
	default:
		v.log.Warn("cannot poll pidfd; polling /proc", "err", err)
		v.pollProc()
	}
}

// pollProc closes v.done once the process is gone or a zombie, or returns
// when Close is called.
func (v *vm) pollProc() {
	t := time.NewTicker(procPollInterval)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		}
		if !v.alive() {
			v.log.Info("qemu exited")
			close(v.done)
			return
		}
	}
}

// alive reports whether the process still runs and is still ours.
func (v *vm) alive() bool {
	st, err := readProcStat(v.pid)
	return err == nil && st.State != 'Z' && st.StartTime == v.start
}

func (v *vm) logEvents() {
	for ev := range v.qmp.Events() {
		v.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
	}
}

// Resume starts the vCPUs of a VM launched paused, or resumes a stopped one.
func (v *vm) Resume(ctx context.Context) error {
	if err := v.qmp.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// Quit makes QEMU exit at once and waits until the process is gone.
func (v *vm) Quit(ctx context.Context) error {
	if v.closed.Load() {
		return fmt.Errorf("quit: %w", ErrDisconnected)
	}
	err := v.qmp.Execute(ctx, "quit", nil, nil)
	// QEMU may close the monitor before its reply gets out.
	if err != nil && !errors.Is(err, ErrDisconnected) {
		return fmt.Errorf("quit: %w", err)
	}
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("quit: wait for exit: %w", ctx.Err())
	}
}

// Signal sends sig to QEMU. Through a pidfd it cannot reach another
// process that reused the pid; without one, the start time is checked
// first.
func (v *vm) Signal(sig syscall.Signal) error {
	var err error
	if v.pidfd != nil {
		rc, cerr := v.pidfd.SyscallConn()
		if cerr == nil {
			cerr = rc.Control(func(fd uintptr) {
				err = unix.PidfdSendSignal(int(fd), sig, nil, 0)
			})
		}
		if cerr != nil {
			return fmt.Errorf("signal %v: %w", sig, cerr)
		}
	} else {
		if v.closed.Load() {
			return fmt.Errorf("signal %v: %w", sig, os.ErrClosed)
		}
		if !v.alive() {
			return nil
		}
		err = unix.Kill(v.pid, sig)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %v: %w", sig, err)
	}
	return nil
}

// Close drops the monitor connection and stops watching the process; the
// VM keeps running and can be adopted again. Once the process is known to
// have exited, Close also removes what QEMU left of its own (ownFiles); the
// sockets of the devices it was given are their owners' to remove.
func (v *vm) Close() error {
	v.closeOnce.Do(func() {
		v.closed.Store(true)
		v.qmp.Close()
		close(v.stop)
		if v.pidfd != nil {
			v.pidfd.Close()
		}
		select {
		case <-v.done:
			for _, p := range ownFiles(v.dir) {
				os.Remove(p)
			}
		default:
		}
	})
	return nil
}

// ownFiles are the files QEMU keeps for itself in dir: its monitor's
// socket and its pidfile.
func ownFiles(dir statedir.VMDir) []string {
	return []string{dir.QMPSocket(), dir.PIDFile()}
}
