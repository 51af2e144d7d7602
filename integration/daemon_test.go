package integration

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cabinvm/cabin/api/concierge"
)

// daemonProc is one run of cabind.
type daemonProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited; then err is set
	err  error
}

// startDaemon starts cabind on e's state dir and socket, waits until it
// answers, and points e.cc at it.
func (e *env) startDaemon(ctx context.Context) error {
	logFile, err := os.OpenFile(e.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== integration: starting cabind at %s\n", time.Now().Format(time.RFC3339Nano))
	args := append(append([]string(nil), e.wrap...), filepath.Join(e.bin, "cabind"),
		"--socket", e.socket,
		"--state-dir", e.stateDir,
		"--agent", filepath.Join(e.bin, "cabin-agent"),
		"--net", cmp.Or(e.net, "none"),
		"--kernel", cmp.Or(e.kernel, "auto"),
		// Not the host's /etc/cabin/cabind.toml: only these flags.
		"--config", "",
		"--log-level", "info")
	if e.metrics != "" {
		args = append(args, "--metrics-address", e.metrics)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own process group, so the watchdog can kill what it runs (apt,
	// dpkg-deb) with it. QEMU leaves the group as it daemonizes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	d := &daemonProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	e.mu.Lock()
	e.cabind = d
	e.mu.Unlock()

	if err := waitListening(ctx, e.socket, d); err != nil {
		return err
	}
	cc, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	// Serving starts once the VMs left running are adopted.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := concierge.NewVmConciergeClient(cc).ListVms(wctx, &concierge.ListVmsRequest{}, grpc.WaitForReady(true)); err != nil {
		cc.Close()
		return fmt.Errorf("cabind does not answer: %w", err)
	}
	if e.cc != nil {
		e.cc.Close()
	}
	e.cc = cc
	return nil
}

// waitListening waits until something accepts connections on socket, or
// cabind exits.
func waitListening(ctx context.Context, socket string, d *daemonProc) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("cabind exited: %v", d.err)
		case <-ctx.Done():
			return fmt.Errorf("cabind does not listen on %s: %w", socket, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (e *env) daemonRunning() bool {
	if e.cabind == nil {
		return false
	}
	select {
	case <-e.cabind.done:
		return false
	default:
		return true
	}
}

// stopDaemon stops cabind with SIGTERM, as a service manager would, and
// waits for it to exit; it kills it if it does not within 15 s. VMs keep
// running. Stopping a daemon that is not running does nothing.
func (e *env) stopDaemon() error {
	d := e.cabind
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return errors.New("cabind did not exit within 15 s of SIGTERM; killed it")
	}
	var exit *exec.ExitError
	if errors.As(d.err, &exit) {
		return fmt.Errorf("cabind exited after SIGTERM with %v", d.err)
	}
	return d.err
}

// restartDaemon stops cabind, runs whileDown (if not nil), and starts
// cabind again on the same state dir and socket. Whatever happens — a
// failure in whileDown included — cabind runs again for the tests that
// follow once t ends.
func (e *env) restartDaemon(t *testing.T, whileDown func()) {
	t.Helper()
	e.restartAfter(t, func() {
		if err := e.stopDaemon(); err != nil {
			t.Errorf("stopping cabind: %v", err)
		}
		if whileDown != nil {
			whileDown()
		}
	})
}

// crashDaemon kills cabind with SIGKILL, as a crash would, and starts it
// again.
func (e *env) crashDaemon(t *testing.T) {
	t.Helper()
	e.restartAfter(t, func() {
		e.cabind.cmd.Process.Signal(syscall.SIGKILL)
		<-e.cabind.done
	})
}

// restartAfter runs stop, which ends cabind, and starts cabind again; if
// the test ends before that, cabind is started for the tests after it.
func (e *env) restartAfter(t *testing.T, stop func()) {
	t.Helper()
	t.Cleanup(func() {
		if !e.daemonRunning() {
			if err := e.startDaemon(context.Background()); err != nil {
				t.Errorf("starting cabind again after the test: %v", err)
			}
		}
	})
	stop()
	if err := e.startDaemon(t.Context()); err != nil {
		t.Fatalf("starting cabind again: %v", err)
	}
}
