package qemu

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

func skipWithoutQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Skipf("needs %s (Debian package qemu-system-x86): %v", DefaultBinary, err)
	}
}

// haltKernel writes the smallest kernel QEMU's microvm boots: a 32-bit ELF
// whose PVH note (Xen ELF note 18, XEN_ELFNOTE_PHYS32_ENTRY) points at
// "cli; hlt; jmp hlt". The vCPU halts for good, so the VM stays up, idle,
// for process-control tests.
func haltKernel(t *testing.T) string {
	t.Helper()
	const (
		base      = 0x100000 // loaded at 1 MiB, like Linux
		ehdrSize  = 52
		phdrSize  = 32
		noteOff   = ehdrSize + 2*phdrSize
		noteSize  = 12 + 4 + 4 // header, "Xen\0", 32-bit entry
		codeOff   = noteOff + noteSize
		pvhEntry  = 18
		entryAddr = base + codeOff
	)
	code := []byte{0xfa, 0xf4, 0xeb, 0xfd} // cli; hlt; jmp -3 (to hlt)
	size := uint32(codeOff + len(code))
	var b bytes.Buffer
	le := binary.LittleEndian
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(binary.Write(&b, le, elf.Header32{
		Ident:     [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS32), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_386),
		Version:   uint32(elf.EV_CURRENT),
		Entry:     entryAddr,
		Phoff:     ehdrSize,
		Ehsize:    ehdrSize,
		Phentsize: phdrSize,
		Phnum:     2,
	}))
	must(binary.Write(&b, le, elf.Prog32{
		Type: uint32(elf.PT_LOAD), Vaddr: base, Paddr: base,
		Filesz: size, Memsz: size, Flags: uint32(elf.PF_R | elf.PF_X), Align: 0x1000,
	}))
	must(binary.Write(&b, le, elf.Prog32{
		Type: uint32(elf.PT_NOTE), Off: noteOff, Vaddr: base + noteOff, Paddr: base + noteOff,
		Filesz: noteSize, Memsz: noteSize, Flags: uint32(elf.PF_R), Align: 4,
	}))
	must(binary.Write(&b, le, [3]uint32{4, 4, pvhEntry})) // namesz, descsz, type
	b.WriteString("Xen\x00")
	must(binary.Write(&b, le, uint32(entryAddr)))
	b.Write(code)
	p := filepath.Join(t.TempDir(), "halt.elf")
	must(os.WriteFile(p, b.Bytes(), 0o644))
	return p
}

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
	return hypervisor.Config{
		Name:      "test",
		Dir:       dir,
		Machine:   hypervisor.MachineMicroVM,
		Accel:     hypervisor.AccelTCG,
		CPUs:      1,
		MemoryMiB: 64,
		Kernel:    haltKernel(t),
	}
}

func launch(t *testing.T, l *Launcher, cfg hypervisor.Config) *vm {
	t.Helper()
	v, err := l.Launch(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v.(*vm)
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
	if err := v.qmp.Execute(testCtx(t), "query-status", nil, &st); err != nil {
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
	skipWithoutQEMU(t)
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

func TestCloseThenAdopt(t *testing.T) {
	skipWithoutQEMU(t)
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
	if s := queryStatus(t, a.(*vm)); s != "prelaunch" {
		t.Errorf("adopted VM status %q, want prelaunch", s)
	}
	if err := a.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, a.(*vm)); s != "running" {
		t.Errorf("status after Resume %q", s)
	}

	// The directory's QEMU runs: launching another there is refused.
	if _, err := l.Launch(testCtx(t), haltConfig(t, dir)); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second Launch in the same dir: %v, want already exists", err)
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
	skipWithoutQEMU(t)
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
	skipWithoutQEMU(t)
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
	skipWithoutQEMU(t)
	l := testLauncher(t)

	t.Run("missing kernel", func(t *testing.T) {
		dir := vmDir(t)
		cfg := haltConfig(t, dir)
		cfg.Kernel = "/nonexistent/vmlinux"
		_, err := l.Launch(testCtx(t), cfg)
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
		_, err := l.Launch(testCtx(t), cfg)
		if err == nil || !strings.Contains(err.Error(), "invalid kernel header") {
			t.Fatalf("err = %v, want QEMU's message", err)
		}
		t.Log(err)
	})
	t.Run("missing initrd", func(t *testing.T) {
		dir := vmDir(t)
		cfg := haltConfig(t, dir)
		cfg.Initrd = "/nonexistent/initrd"
		_, err := l.Launch(testCtx(t), cfg)
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/initrd") {
			t.Fatalf("err = %v, want QEMU's message naming the initrd", err)
		}
		t.Log(err)
	})
	t.Run("invalid config", func(t *testing.T) {
		cfg := haltConfig(t, vmDir(t))
		cfg.CPUs = 0
		if _, err := l.Launch(testCtx(t), cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("err = %v, want invalid argument", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		cfg := haltConfig(t, "/nonexistent/q1")
		if _, err := l.Launch(testCtx(t), cfg); err == nil {
			t.Fatal("Launch succeeded without its directory")
		}
		if _, err := os.Stat("/nonexistent"); err == nil {
			t.Error("Launch created a directory")
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		l := &Launcher{Binary: "/nonexistent/qemu"}
		if _, err := l.Launch(testCtx(t), haltConfig(t, vmDir(t))); err == nil {
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
	skipWithoutQEMU(t)
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
