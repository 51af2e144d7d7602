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
	// VhostNet gives KVM guests' tap NICs vhost-net (Config.VhostNet):
	// set it where the host has it (HaveVhostNet).
	VhostNet bool

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
func (l *Launcher) Launch(ctx context.Context, hc hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	log := l.logger().With("vm", cfg.Name, "dir", cfg.Dir.Path())
	c, ok := hc.(*claim)
	if !ok || c.dir != cfg.Dir || c.f == nil {
		return nil, fmt.Errorf("launch in %s without a claim on it: %w", cfg.Dir.Path(), errdefs.ErrFailedPrecondition)
	}
	qcfg := Config{Config: cfg, VhostNet: l.VhostNet}
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
	// The claim says no QEMU lives here: what an earlier one left is
	// stale.
	for _, p := range dir.RuntimeFiles() {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale file: %w", err)
		}
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
	// Last, after the boot files Cmdline numbered: the claim's locked
	// file. QEMU's daemon inherits it and keeps it open, so the lock is
	// held for exactly as long as a QEMU of this launch lives.
	cmd.ExtraFiles = append(cmd.ExtraFiles, c.f)
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
	v, err := find(dir, pid, 0, log)
	if err == nil {
		if err = v.Connect(ctx); err != nil {
			v.Close()
		}
	}
	if err != nil {
		killStray(dir, log)
		return nil, err
	}
	log.Info("qemu started", "pid", v.pid, "machine", cfg.Machine, "accel", cfg.Accel,
		"cpus", cfg.CPUs, "memory_mib", cfg.MemoryMiB)
	return v, nil
}

// Adopt finds the QEMU that an earlier Launch started in dir, if the
// process named by its pidfile still runs, started at startTime, and is
// that directory's QEMU; otherwise it fails with ErrNotRunning. It does
// not connect to QEMU's monitor (vm.Connect), which may not answer.
func (l *Launcher) Adopt(_ context.Context, dir statedir.VMDir, startTime uint64) (hypervisor.VM, error) {
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
	v, err := find(dir, pid, startTime, log)
	if errors.Is(err, hypervisor.ErrNotRunning) {
		// Gone: what it left of its own is stale, unless another QEMU
		// holds the directory now (the claim tells).
		if c, cerr := l.Claim(dir); cerr == nil {
			for _, p := range ownFiles(dir) {
				os.Remove(p)
			}
			c.Release()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	log.Info("qemu found", "pid", pid)
	return v, nil
}

// claim is a Launcher's claim: the VM directory's lock file, locked.
type claim struct {
	dir statedir.VMDir
	mu  sync.Mutex
	f   *os.File // nil once released
}

// Claim takes dir by locking its lock file, which every QEMU Launch starts
// holds for its life (statedir.VMDir.LockFile). A QEMU an earlier cabind
// started before there were locks holds none: its pidfile is checked too.
func (l *Launcher) Claim(dir statedir.VMDir) (hypervisor.Claim, error) {
	f, err := os.OpenFile(dir.LockFile(), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", dir.Path(), err)
	}
	inUse := func() error {
		f.Close()
		what := "a qemu"
		if pid, err := readPIDFile(dir.PIDFile()); err == nil {
			what = fmt.Sprintf("qemu pid %d", pid)
		}
		return fmt.Errorf("%s may still run in %s: %w", what, dir.Path(), hypervisor.ErrInUse)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, inUse()
		}
		f.Close()
		return nil, fmt.Errorf("claim %s: %w", dir.Path(), err)
	}
	if pid, err := readPIDFile(dir.PIDFile()); err == nil {
		if ok, _ := isQEMUFor(pid, dir.PIDFile()); ok {
			return nil, inUse()
		}
	}
	return &claim{dir: dir, f: f}, nil
}

// Release closes the launcher's descriptor of the lock file. Before a
// Launch, that lets go of the lock; after one, QEMU's inherited
// descriptor holds it on.
func (c *claim) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
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

// find checks that pid is dir's running QEMU (and, unless wantStart is
// zero, that it started at wantStart) and watches it for its exit. It does
// not connect to its monitor: see Connect.
func find(dir statedir.VMDir, pid int, wantStart uint64, log *slog.Logger) (*vm, error) {
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
	v := &vm{
		dir:   dir,
		pid:   pid,
		start: st.StartTime,
		log:   log.With("pid", pid),
		done:  make(chan struct{}),
		pidfd: pidfd,
		stop:  make(chan struct{}),
	}
	go v.watch()
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

// vm is a QEMU process and its monitor connection, once made. After Close it no
// longer watches the process: Done closes only if the exit was already
// seen.
type vm struct {
	dir   statedir.VMDir
	pid   int
	start uint64
	log   *slog.Logger
	done  chan struct{} // closed when the process has exited

	// mu guards qmp, nil until Connect makes it.
	mu  sync.Mutex
	qmp *Client
	// events are the waiters for the monitor's events (hotplug.go).
	events eventWaiters
	// balloon is the memory balloon's (balloon.go).
	balloon balloonState

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

// Connect connects to QEMU's monitor, unless connected already.
func (v *vm) Connect(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed.Load() {
		return fmt.Errorf("connect: %w", ErrDisconnected)
	}
	if v.qmp != nil {
		return nil
	}
	qmp, err := Dial(ctx, v.dir.QMPSocket())
	if err != nil {
		return fmt.Errorf("connect to the monitor: %w", err)
	}
	v.qmp = qmp
	go v.logEvents(qmp)
	return nil
}

// monitor is the monitor connection, or ErrNotConnected.
func (v *vm) monitor() (*Client, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.qmp == nil {
		return nil, hypervisor.ErrNotConnected
	}
	return v.qmp, nil
}

func (v *vm) logEvents(qmp *Client) {
	for ev := range qmp.Events() {
		v.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
		v.events.dispatch(ev)
	}
}

// Resume starts the vCPUs of a VM launched paused, or resumes a stopped one.
func (v *vm) Resume(ctx context.Context) error {
	qmp, err := v.monitor()
	if err == nil {
		err = qmp.Execute(ctx, "cont", nil, nil)
	}
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// Pause stops the vCPUs (QMP stop). QEMU answers a stop of a stopped VM
// with success.
func (v *vm) Pause(ctx context.Context) error {
	qmp, err := v.monitor()
	if err == nil {
		err = qmp.Execute(ctx, "stop", nil, nil)
	}
	if err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// Paused asks QEMU whether the vCPUs run (QMP query-status).
func (v *vm) Paused(ctx context.Context) (bool, error) {
	qmp, err := v.monitor()
	if err != nil {
		return false, fmt.Errorf("query status: %w", err)
	}
	st, err := QueryStatus(ctx, qmp)
	if err != nil {
		return false, err
	}
	return !st.Running, nil
}

// Quit makes QEMU exit at once and waits until the process is gone.
func (v *vm) Quit(ctx context.Context) error {
	if v.closed.Load() {
		return fmt.Errorf("quit: %w", ErrDisconnected)
	}
	qmp, err := v.monitor()
	if err != nil {
		return fmt.Errorf("quit: %w", err)
	}
	err = qmp.Execute(ctx, "quit", nil, nil)
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
		v.mu.Lock()
		v.closed.Store(true)
		if v.qmp != nil {
			v.qmp.Close()
		}
		v.mu.Unlock()
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
