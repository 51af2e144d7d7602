package integration

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/container/runtimebuild"
)

// sharedName is the VM most tests run their commands in. Its host name
// (bootcfg.Hostname) is the same string.
const sharedName = "cit-shared"

// env is the environment TestMain sets up for every test.
type env struct {
	dir      string // the temporary root: binaries, state dir, socket, log
	bin      string // cabind, cabin, cabin-agent, cabin-runtime, nsroot
	stateDir string
	socket   string
	logPath  string // cabind's stderr, across restarts
	// wrap, when set, is the command cabind runs under: its arguments
	// come before cabind's path and flags.
	wrap []string
	// net is cabind's --net: the shared cabind's VMs have none unless
	// they ask (user-mode networks need no privilege), so that tests run
	// on the host make no taps, NAT rules or forwarding there; a cabind
	// a test runs in a network namespace of its own may have taps.
	net string
	// metrics is cabind's --metrics-address, when it serves metrics.
	metrics string
	// kernel is cabind's --kernel; auto when empty.
	kernel string

	mu     sync.Mutex // guards cabind, which the watchdog reads
	dying  sync.Mutex // held by whoever cleans up: watchdog or teardown
	cabind *daemonProc
	cc     *grpc.ClientConn
	shared vmRef
}

// vmRef is what the tests need to know of a running VM.
type vmRef struct {
	name string
	pid  int
	cid  int64
}

var (
	// skipReason is why the tests cannot run here; empty when they can.
	skipReason string
	// theEnv is set up by TestMain when skipReason is empty.
	theEnv *env
)

// needEnv returns the shared environment, or skips tb when there is none.
func needEnv(tb testing.TB) *env {
	tb.Helper()
	if skipReason != "" {
		tb.Skip(skipReason)
	}
	return theEnv
}

func TestMain(m *testing.M) {
	if os.Getenv(reaperEnv) != "" {
		runReaper()
		os.Exit(0)
	}
	flag.Parse()
	startReaper()
	if skipReason = prerequisites(); skipReason != "" {
		os.Exit(m.Run())
	}
	e, err := newEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.Exit(1)
	}
	theEnv = e
	reapAfter(e.dir)
	// The shared cabind serves metrics on a loopback port (metrics_test.go).
	if e.metrics, err = freeLoopbackPort(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.Exit(1)
	}
	disarm := e.watchdog()
	code := 1
	if err := e.setup(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: setup failed: %v\n", err)
	} else {
		code = m.Run()
	}
	disarm()
	if err := e.teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "--- FAIL: TestMain teardown\n    %v\n", err)
		code = 1
	}
	if code != 0 {
		e.printLogTail(os.Stderr)
	}
	os.RemoveAll(e.dir)
	stopReaper()
	os.Exit(code)
}

// prerequisites says why VMs cannot be booted here, or "".
func prerequisites() string {
	if testing.Short() {
		return "boots real VMs; skipped with -short"
	}
	if os.Geteuid() != 0 {
		return "needs root: cabind runs QEMU and owns its state dir"
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "needs qemu-system-x86_64 (Debian: qemu-system-x86): " + err.Error()
	}
	for _, p := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(p); err != nil {
			return "the guest image build needs apt-get and dpkg-deb: " + err.Error()
		}
	}
	return ""
}

// newEnv makes the temporary directory everything of this run lives in.
func newEnv() (*env, error) {
	// Short: every unix socket below it must fit in sun_path.
	dir, err := os.MkdirTemp("", "cit")
	if err != nil {
		return nil, err
	}
	return &env{
		dir:      dir,
		bin:      filepath.Join(dir, "bin"),
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "cabind.sock"),
		logPath:  filepath.Join(dir, "cabind.log"),
		// CABIN_TEST_KERNEL=generic runs the suite on Debian's kernel
		// where cabin's minimal kernel is built (cabind's --kernel).
		kernel: os.Getenv("CABIN_TEST_KERNEL"),
	}, nil
}

// setup builds the binaries, starts cabind, builds the guest image and
// boots the shared VM. On error teardown cleans up what it did.
func (e *env) setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"build binaries", func() error { return buildBinaries(ctx, e.bin) }},
		{"start cabind", func() error { return e.startDaemon(ctx) }},
		{"build the guest image", func() error { return buildImage(ctx, e.cc) }},
		{"boot the shared VM", func() (err error) {
			e.shared, err = bootVM(ctx, e.cc, sharedName)
			return err
		}},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.do(); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
		fmt.Fprintf(os.Stderr, "integration: %s took %s\n", s.what, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// buildBinaries builds cabind, cabin, cabin-agent, cabin-runtime and the
// test program nsroot into dir, the guest's two exactly as the Makefile
// builds them (static and stripped; the agent without gRPC tracing, the
// runtime with cgo).
func buildBinaries(ctx context.Context, dir string) error {
	const cmd = "github.com/cabinvm/cabin/cmd/"
	builds := []struct {
		env  []string
		args []string
	}{
		{[]string{"CGO_ENABLED=0"}, []string{"build", "-trimpath", "-tags", "grpcnotrace", "-ldflags", "-s -w",
			"-o", filepath.Join(dir, "cabin-agent"), cmd + "cabin-agent"}},
		{[]string{"CGO_ENABLED=1"}, []string{"build", "-trimpath", "-tags", runtimebuild.Tags, "-ldflags", runtimebuild.LDFlags,
			"-o", filepath.Join(dir, "cabin-runtime"), cmd + "cabin-runtime"}},
		{nil, []string{"build", "-trimpath", "-o", dir + "/", cmd + "cabind", cmd + "cabin"}},
		// A test program run inside containers in the guest.
		{[]string{"CGO_ENABLED=0"}, []string{"build", "-trimpath", "-o", filepath.Join(dir, "nsroot"), "./testdata/nsroot"}},
	}
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, b := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := exec.CommandContext(ctx, "go", b.args...)
			c.Env = append(os.Environ(), b.env...)
			if out, err := c.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %q: %w\n%s", b.args, err, out)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// buildImage has cabind build the guest image, so that the first boot is
// not slowed by it.
func buildImage(ctx context.Context, cc grpc.ClientConnInterface) error {
	stream, err := cabinv1.NewImagesClient(cc).Build(ctx, &cabinv1.BuildImageRequest{})
	if err != nil {
		return err
	}
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("the build ended without an image")
		}
		if err != nil {
			return err
		}
		if img := p.GetImage(); img != nil {
			if img.GetKernelPath() == "" || img.GetInitrdPath() == "" {
				return fmt.Errorf("the build reported an incomplete image: %v", img)
			}
			return nil
		}
	}
}

// teardown stops every VM with StopAllVms and checks that it did so (each
// VM's VmStoppedSignal says STOP_ALL_VMS_REQUESTED and its QEMU is gone),
// stops cabind, and kills any QEMU of this run still there. Errors are
// test failures.
func (e *env) teardown() error {
	var errs []error
	if e.cc != nil && e.daemonRunning() {
		errs = append(errs, e.stopAll())
	} else if e.cabind != nil {
		errs = append(errs, errors.New("cabind was not running at teardown"))
	}
	if err := e.stopDaemon(); err != nil {
		errs = append(errs, err)
	}
	if left := killQEMUs(e.stateDir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("QEMU processes %v were still running at the end; killed them", left))
	}
	return errors.Join(errs...)
}

// stopAll is the StopAllVms check.
func (e *env) stopAll() error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := concierge.NewVmConciergeClient(e.cc)
	list, err := c.ListVms(ctx, &concierge.ListVmsRequest{})
	if err != nil {
		return fmt.Errorf("ListVms: %w", err)
	}
	w, err := watchEvents(ctx, e.cc, "")
	if err != nil {
		return err
	}
	defer w.close()
	if _, err := c.StopAllVms(ctx, nil); err != nil {
		return fmt.Errorf("StopAllVms: %w", err)
	}
	var errs []error
	if e.shared.name != "" && !slices.ContainsFunc(list.GetVms(), func(v *concierge.ExtendedVmInfo) bool { return v.GetName() == e.shared.name }) {
		errs = append(errs, fmt.Errorf("ListVms before StopAllVms does not list the shared VM %s", e.shared.name))
	}
	for _, v := range list.GetVms() {
		ev, err := w.next(10*time.Second, func(ev *cabinv1.Event) bool {
			return ev.GetVmStopped().GetName() == v.GetName()
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("StopAllVms: VmStoppedSignal for %s: %w", v.GetName(), err))
			continue
		}
		if got := ev.GetVmStopped().GetReason(); got != concierge.VmStopReason_STOP_ALL_VMS_REQUESTED {
			errs = append(errs, fmt.Errorf("StopAllVms: %s stopped with reason %v, want STOP_ALL_VMS_REQUESTED", v.GetName(), got))
		}
		if pid := int(v.GetVmInfo().GetPid()); !processGone(pid) {
			errs = append(errs, fmt.Errorf("StopAllVms returned but the QEMU of %s (pid %d) still runs", v.GetName(), pid))
		}
	}
	if after, err := c.ListVms(ctx, &concierge.ListVmsRequest{}); err != nil {
		errs = append(errs, fmt.Errorf("ListVms after StopAllVms: %w", err))
	} else if n := len(after.GetVms()); n != 0 {
		errs = append(errs, fmt.Errorf("ListVms after StopAllVms lists %d VMs: %v", n, after.GetVms()))
	}
	return errors.Join(errs...)
}

// watchdog kills what this run started if the run is interrupted or about
// to hit go test's -timeout, which would otherwise skip teardown and leave
// QEMU running. The returned function disarms it before teardown, which
// then owns the cleanup: signals that arrive during teardown are dropped.
func (e *env) watchdog() (disarm func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var timer *time.Timer
	var timeout <-chan time.Time
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 0 {
			// Leave time for the timeout's own report.
			timer = time.NewTimer(d - min(d/10, 30*time.Second))
			timeout = timer.C
		}
	}
	go func() {
		for {
			select {
			case s := <-sigs:
				if !e.dying.TryLock() {
					fmt.Fprintf(os.Stderr, "integration: %v: teardown is under way\n", s)
					continue
				}
				fmt.Fprintf(os.Stderr, "integration: %v: killing cabind and its VMs\n", s)
				e.emergency()
				os.Exit(2)
			case <-timeout:
				timeout = nil
				if e.dying.TryLock() {
					fmt.Fprintln(os.Stderr, "integration: the test timeout is near: killing cabind and its VMs")
					e.emergency()
					e.dying.Unlock()
				}
			}
		}
	}()
	return func() {
		if timer != nil {
			timer.Stop()
		}
		e.dying.Lock()
	}
}

// emergency kills cabind with whatever it runs and every QEMU of this run,
// and removes the temporary directory.
func (e *env) emergency() {
	e.mu.Lock()
	d := e.cabind
	e.mu.Unlock()
	if d != nil {
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	}
	killQEMUs(e.stateDir)
	// A killed process may finish the write it was in.
	for i := 0; i < 3 && os.RemoveAll(e.dir) != nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

// printLogTail shows the end of cabind's log, for a failed run.
func (e *env) printLogTail(w io.Writer) {
	const max = 16 << 10
	b, err := os.ReadFile(e.logPath)
	if err != nil {
		return
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	fmt.Fprintf(w, "--- cabind log (last %d bytes of %s) ---\n%s--- end of cabind log ---\n", len(b), e.logPath, b)
}
