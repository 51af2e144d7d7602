package qemu

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
	"github.com/cabinvm/cabin/internal/statedir"
)

// vmDir makes a short directory: unix socket paths hold 107 bytes, and
// t.TempDir's paths are long.
func vmDir(t *testing.T) statedir.VMDir {
	t.Helper()
	dir, err := os.MkdirTemp("", "q")
	if err != nil {
		t.Fatal(err)
	}
	d := statedir.VMDir(dir)
	t.Cleanup(func() {
		// Never leave a QEMU behind, whatever the test did.
		if pid, err := readPIDFile(d.PIDFile()); err == nil {
			if ok, _ := isQEMUFor(pid, d.PIDFile()); ok {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	})
	return d
}

func testLauncher(t *testing.T) *Launcher {
	return &Launcher{Log: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func haltConfig(t *testing.T, dir statedir.VMDir) hypervisor.Config {
	cfg := hypervisor.Config{
		Name:      "test",
		Dir:       dir,
		Machine:   hypervisor.MachineMicroVM,
		Accel:     hypervisor.AccelTCG,
		CPUs:      1,
		MemoryMiB: 64,
		Kernel:    qemutest.HaltKernel(t),
	}
	withChannel(&cfg)
	return cfg
}

func launch(t *testing.T, l *Launcher, cfg hypervisor.Config) *vm {
	t.Helper()
	v, err := launchIn(t, l, cfg)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v.(*vm)
}

// launchIn claims cfg's directory and launches there, as cabind does.
func launchIn(t *testing.T, l *Launcher, cfg hypervisor.Config) (hypervisor.VM, error) {
	t.Helper()
	c, err := l.Claim(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer c.Release()
	return l.Launch(testCtx(t), c, cfg)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func queryStatus(t *testing.T, v *vm) string {
	t.Helper()
	var st struct {
		Status string `json:"status"`
	}
	qmp, err := v.monitor()
	if err != nil {
		t.Fatal(err)
	}
	if err := qmp.Execute(testCtx(t), "query-status", nil, &st); err != nil {
		t.Fatalf("query-status: %v", err)
	}
	return st.Status
}

func waitDone(t *testing.T, v hypervisor.VM) {
	t.Helper()
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after the process should have exited")
	}
}

// processGone reports whether pid no longer names a live process.
func processGone(pid int) bool {
	st, err := readProcStat(pid)
	return err != nil || st.State == 'Z'
}

func TestLaunchResumeQuit(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	v := launch(t, testLauncher(t), haltConfig(t, dir))

	pid, err := readPIDFile(dir.PIDFile())
	if err != nil || pid != v.PID() {
		t.Fatalf("pidfile says %d (%v), VM says %d", pid, err, v.PID())
	}
	st, err := readProcStat(v.PID())
	if err != nil || st.StartTime != v.StartTime() {
		t.Fatalf("process start %d (%v), VM says %d", st.StartTime, err, v.StartTime())
	}
	for _, p := range []string{dir.QMPSocket(), dir.AgentSocket(), dir.ConsoleSocket()} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Type() != fs.ModeSocket {
			t.Errorf("%s: %v", p, err)
		}
	}
	// -S: QEMU reports "prelaunch" until the first cont.
	if s := queryStatus(t, v); s != "prelaunch" {
		t.Errorf("status before Resume %q, want prelaunch", s)
	}
	if err := v.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, v); s != "running" {
		t.Errorf("status after Resume %q, want running", s)
	}

	if err := v.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
	if !processGone(v.PID()) {
		t.Error("process still there after Quit")
	}
	// QEMU removes its pidfile on a clean exit.
	if _, err := os.Stat(dir.PIDFile()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pidfile after Quit: %v", err)
	}
	if err := v.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("Signal after exit: %v, want nil (ESRCH ignored)", err)
	}
}

// A QEMU killed leaves its files behind; closed once its exit is known,
// the VM clears QEMU's own (monitor socket, pidfile), while the sockets of
// its devices are their owners' to remove.
func TestCloseAfterKillClearsOwnFiles(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	v := launch(t, testLauncher(t), haltConfig(t, dir))
	if err := v.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
	if _, err := os.Stat(dir.PIDFile()); err != nil {
		t.Fatalf("pidfile after SIGKILL: %v; the test needs QEMU to leave it", err)
	}
	v.Close()
	for _, p := range []string{dir.QMPSocket(), dir.PIDFile()} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Close: %v", p, err)
		}
	}
	if _, err := os.Stat(dir.AgentSocket()); err != nil {
		t.Errorf("agent socket after Close: %v, want it left to its owner", err)
	}
}

func TestCloseThenAdopt(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	l := testLauncher(t)
	v := launch(t, l, haltConfig(t, dir))
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if processGone(v.PID()) {
		t.Fatal("Close stopped the VM")
	}

	_, err := l.Adopt(testCtx(t), dir, v.StartTime()+1)
	if !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Adopt with a wrong start time: %v, want ErrNotRunning", err)
	}

	a, err := l.Adopt(testCtx(t), dir, v.StartTime())
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	defer a.Close()
	if a.PID() != v.PID() || a.StartTime() != v.StartTime() {
		t.Errorf("adopted pid %d start %d, want %d %d", a.PID(), a.StartTime(), v.PID(), v.StartTime())
	}
	// Found, not yet connected: what needs the monitor says so.
	if err := a.Resume(testCtx(t)); !errors.Is(err, hypervisor.ErrNotConnected) {
		t.Errorf("Resume before Connect: %v, want ErrNotConnected", err)
	}
	if err := a.Connect(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, a.(*vm)); s != "prelaunch" {
		t.Errorf("adopted VM status %q, want prelaunch", s)
	}
	if err := a.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, a.(*vm)); s != "running" {
		t.Errorf("status after Resume %q", s)
	}

	// The directory's QEMU runs: claiming the directory for another is
	// refused.
	if _, err := launchIn(t, l, haltConfig(t, dir)); !errors.Is(err, hypervisor.ErrInUse) {
		t.Errorf("second launch in the same dir: %v, want ErrInUse", err)
	}

	if err := a.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, a)
	if _, err := l.Adopt(testCtx(t), dir, v.StartTime()); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Adopt after Quit: %v, want ErrNotRunning", err)
	}
}

func TestSignalKill(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	l := testLauncher(t)
	cfg := haltConfig(t, dir)
	v := launch(t, l, cfg)
	if err := v.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
	if !processGone(v.PID()) {
		t.Error("process still there after SIGKILL")
	}
	if err := v.Signal(syscall.SIGKILL); err != nil {
		t.Errorf("Signal after exit: %v", err)
	}
	if err := v.Quit(testCtx(t)); err != nil {
		t.Errorf("Quit after exit: %v", err)
	}

	// SIGKILL leaves the pidfile and sockets behind.
	if _, err := os.Stat(dir.PIDFile()); err != nil {
		t.Fatalf("pidfile after SIGKILL: %v", err)
	}
	if _, err := l.Adopt(testCtx(t), dir, v.StartTime()); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Adopt after SIGKILL: %v, want ErrNotRunning", err)
	}
	// A new launch clears them.
	v2 := launch(t, l, cfg)
	if v2.PID() == v.PID() {
		t.Error("same pid after relaunch")
	}
	if err := v2.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v2)
}

// After daemonizing QEMU keeps writing to the VM's QEMU log (-D).
func TestQEMULogAfterDaemonize(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	v := launch(t, testLauncher(t), haltConfig(t, dir))
	if err := v.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
	b, err := os.ReadFile(dir.QEMULog())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "terminating on signal 15") {
		t.Errorf("qemu log %q lacks QEMU's message on SIGTERM", b)
	}
}

func TestLaunchErrors(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	l := testLauncher(t)

	t.Run("missing kernel", func(t *testing.T) {
		dir := vmDir(t)
		cfg := haltConfig(t, dir)
		cfg.Kernel = "/nonexistent/vmlinux"
		_, err := launchIn(t, l, cfg)
		if err == nil || !strings.Contains(err.Error(), "could not open kernel file '/nonexistent/vmlinux'") {
			t.Fatalf("err = %v, want QEMU's message", err)
		}
		t.Log(err)
	})
	t.Run("not a kernel", func(t *testing.T) {
		dir := vmDir(t)
		cfg := haltConfig(t, dir)
		cfg.Kernel = "/etc/hostname"
		if _, err := os.Stat(cfg.Kernel); err != nil {
			t.Skip(err)
		}
		_, err := launchIn(t, l, cfg)
		if err == nil || !strings.Contains(err.Error(), "invalid kernel header") {
			t.Fatalf("err = %v, want QEMU's message", err)
		}
		t.Log(err)
	})
	t.Run("missing initrd", func(t *testing.T) {
		dir := vmDir(t)
		cfg := haltConfig(t, dir)
		cfg.Initrd = "/nonexistent/initrd"
		_, err := launchIn(t, l, cfg)
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/initrd") {
			t.Fatalf("err = %v, want QEMU's message naming the initrd", err)
		}
		t.Log(err)
	})
	t.Run("invalid config", func(t *testing.T) {
		cfg := haltConfig(t, vmDir(t))
		cfg.CPUs = 0
		if _, err := launchIn(t, l, cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("err = %v, want invalid argument", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		cfg := haltConfig(t, "/nonexistent/q1")
		if _, err := launchIn(t, l, cfg); err == nil {
			t.Fatal("Launch succeeded without its directory")
		}
		if _, err := os.Stat("/nonexistent"); err == nil {
			t.Error("Launch created a directory")
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		l := &Launcher{Binary: "/nonexistent/qemu"}
		if _, err := launchIn(t, l, haltConfig(t, vmDir(t))); err == nil {
			t.Fatal("Launch succeeded without QEMU")
		}
	})
}

func TestAdoptNothing(t *testing.T) {
	l := testLauncher(t)
	dir := vmDir(t)
	if _, err := l.Adopt(testCtx(t), dir, 1); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Adopt without pidfile: %v, want ErrNotRunning", err)
	}
	// A pidfile naming a live process that is not this dir's QEMU.
	if err := os.WriteFile(dir.PIDFile(), []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := readProcStat(1)
	if err != nil {
		t.Skip(err)
	}
	if _, err := l.Adopt(testCtx(t), dir, st.StartTime); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Adopt of pid 1: %v, want ErrNotRunning", err)
	}
}

// TestBootKernel boots a real guest kernel (CABIN_TEST_KERNEL, a vmlinux or
// bzImage) without an initramfs: the kernel finds no root file system and
// panics, panic=-1 reboots, -no-reboot ends QEMU. That proves the kernel
// command line, the console socket and exit on guest death.
func TestBootKernel(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	kernel := os.Getenv("CABIN_TEST_KERNEL")
	if kernel == "" {
		t.Skip("set CABIN_TEST_KERNEL to a guest kernel to boot one")
	}
	for _, machine := range []hypervisor.Machine{hypervisor.MachineMicroVM, hypervisor.MachineQ35} {
		t.Run(string(machine), func(t *testing.T) {
			dir := vmDir(t)
			cfg := hypervisor.Config{
				Name:      "boot",
				Dir:       dir,
				Machine:   machine,
				Accel:     hypervisor.AccelTCG,
				CPUs:      1,
				MemoryMiB: 256,
				Kernel:    kernel,
				// Later words win: let the panic reach the console.
				KernelArgs: []string{"loglevel=4"},
			}
			withChannel(&cfg)
			v := launch(t, testLauncher(t), cfg)
			console, err := net.Dial("unix", dir.ConsoleSocket())
			if err != nil {
				t.Fatal(err)
			}
			defer console.Close()
			out := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(console)
				out <- b
			}()
			if err := v.Resume(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-v.Done():
			case <-time.After(120 * time.Second):
				t.Fatal("guest did not panic and exit within 120 s")
			}
			log := <-out // QEMU's exit closes the console
			if !bytes.Contains(log, []byte("Kernel panic")) {
				t.Errorf("console lacks the panic:\n%s", log)
			}
		})
	}
}

// TestLaunchOpenBootFiles boots a kernel and initrd passed open: QEMU
// reads them as /proc/self/fd/N, through its fork into a daemon, even with
// their paths gone. The caller's descriptors stay open, the caller's.
func TestLaunchOpenBootFiles(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	cfg := haltConfig(t, dir)
	initrd := filepath.Join(filepath.Dir(cfg.Kernel), "initrd")
	if err := os.WriteFile(initrd, bytes.Repeat([]byte("initrd"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Initrd = initrd
	open := func(path string) *os.File {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		// Only the open file is left for QEMU to read.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		return f
	}
	cfg.KernelFile, cfg.InitrdFile = open(cfg.Kernel), open(cfg.Initrd)

	v := launch(t, testLauncher(t), cfg)
	if err := v.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, v); s != "running" {
		t.Errorf("status after Resume %q, want running", s)
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(v.PID()), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	if got, _ := argAfter(args, "-kernel"); got != "/proc/self/fd/3" {
		t.Errorf("-kernel %q, want /proc/self/fd/3", got)
	}
	if got, _ := argAfter(args, "-initrd"); got != "/proc/self/fd/4" {
		t.Errorf("-initrd %q, want /proc/self/fd/4", got)
	}
	for _, f := range []*os.File{cfg.KernelFile, cfg.InitrdFile} {
		if _, err := f.Stat(); err != nil {
			t.Errorf("Launch closed the caller's %s: %v", f.Name(), err)
		}
	}
	if err := v.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
}

// A file that QEMU cannot load as a kernel, passed open, fails the launch
// with QEMU's message, as it does by path.
func TestLaunchOpenBootFileError(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	cfg := haltConfig(t, vmDir(t))
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg.KernelFile = f
	_, err = launchIn(t, testLauncher(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "/proc/self/fd/3") {
		t.Fatalf("err = %v, want QEMU's message naming /proc/self/fd/3", err)
	}
	t.Log(err)
}

// qemutest cannot import this package for DefaultBinary.
func TestQEMUTestBinary(t *testing.T) {
	if qemutest.Binary != DefaultBinary {
		t.Errorf("qemutest.Binary = %q, want DefaultBinary %q", qemutest.Binary, DefaultBinary)
	}
}

// TestLaunchShares launches a VM with two 9p shares and checks what QEMU
// made of the options Cmdline wrote: each device carries its tag, and QEMU
// holds each directory open, including one whose path has a comma (escaped
// on the command line). A share whose directory is missing fails the
// launch with QEMU's message.
func TestLaunchShares(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	base := t.TempDir()
	ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "a,readonly=off")
	for _, d := range []string{ro, rw} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := haltConfig(t, dir)
	cfg.Shares = []hypervisor.Share{{Tag: "cabinRootfs", Path: ro, ReadOnly: true}, {Tag: "scratch", Path: rw}}
	v := launch(t, testLauncher(t), cfg)

	var qtree string
	if err := v.qmp.Execute(testCtx(t), "human-monitor-command", map[string]string{"command-line": "info qtree"}, &qtree); err != nil {
		t.Fatalf("info qtree: %v", err)
	}
	for _, want := range []string{`mount_tag = "cabinRootfs"`, `fsdev = "fs0"`, `mount_tag = "scratch"`, `fsdev = "fs1"`} {
		if !strings.Contains(qtree, want) {
			t.Errorf("info qtree lacks %s:\n%s", want, qtree)
		}
	}
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(v.PID()), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]bool{}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(v.PID()), "fd", fd.Name())); err == nil {
			open[target] = true
		}
	}
	for _, d := range []string{ro, rw} {
		if !open[d] {
			t.Errorf("QEMU does not hold %s open; it holds %v", d, open)
		}
	}
	if err := v.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)

	cfg = haltConfig(t, vmDir(t))
	cfg.Shares = []hypervisor.Share{{Tag: "gone", Path: filepath.Join(base, "missing")}}
	if _, err := launchIn(t, testLauncher(t), cfg); err == nil || !strings.Contains(err.Error(), "failed to open '"+filepath.Join(base, "missing")+"'") {
		t.Fatalf("Launch with a missing share dir: %v, want QEMU's message naming it", err)
	}
}

// The QEMU a launch starts holds its directory's claim for its whole life:
// stopped, with its pidfile and sockets gone, it still does, and no other
// launch may touch the directory; once it is dead, the directory is free.
func TestClaimHeldByQEMU(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	l := testLauncher(t)
	v := launch(t, l, haltConfig(t, dir))
	if err := v.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for _, p := range dir.RuntimeFiles() {
		os.Remove(p)
	}
	if _, err := l.Claim(dir); !errors.Is(err, hypervisor.ErrInUse) {
		t.Fatalf("Claim of a stopped QEMU's directory without its pidfile: %v, want ErrInUse", err)
	}
	if err := v.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, v)
	c, err := l.Claim(dir)
	if err != nil {
		t.Fatalf("Claim after the QEMU died: %v", err)
	}
	// Held by this claim, the directory is not free for another.
	if _, err := l.Claim(dir); !errors.Is(err, hypervisor.ErrInUse) {
		t.Errorf("second Claim while the first is held: %v, want ErrInUse", err)
	}
	c.Release()
	if c, err := l.Claim(dir); err != nil {
		t.Errorf("Claim after Release: %v", err)
	} else {
		c.Release()
	}
}

// A launch needs a claim on its directory.
func TestLaunchWithoutClaim(t *testing.T) {
	l := testLauncher(t)
	dir := vmDir(t)
	if _, err := l.Launch(testCtx(t), nil, haltConfig(t, dir)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Launch without a claim: %v, want failed precondition", err)
	}
	other := vmDir(t)
	c, err := l.Claim(other)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if _, err := l.Launch(testCtx(t), c, haltConfig(t, dir)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Launch with another directory's claim: %v, want failed precondition", err)
	}
}
