package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// signalsChildEnv makes the test binary run signalsChild instead of its
// tests.
const signalsChildEnv = "CABIN_TEST_SIGNALS_CHILD"

// signalsChild sets PID 1's signals up as initMain does, says so, and
// exits 0 on a power-off signal.
func signalsChild() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx := handleSignals(context.Background(), log)
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("power-off")
	os.Exit(0)
}

// TestPID1Signals runs the agent's signal setup in a child, as PID 1 of a
// PID namespace of its own (as in the VM) and as an ordinary process, sends
// it every signal that would end a Go program and must not end init, then
// each power-off signal: it must survive the first and power off on the
// second.
func TestPID1Signals(t *testing.T) {
	if os.Getenv(signalsChildEnv) != "" {
		signalsChild()
		return
	}
	for _, pid1 := range []bool{true, false} {
		for _, off := range powerOffSignals {
			name := fmt.Sprintf("pid1=%v/%v", pid1, off)
			t.Run(name, func(t *testing.T) { testSignals(t, pid1, off.(syscall.Signal)) })
		}
	}
}

func testSignals(t *testing.T, pid1 bool, off syscall.Signal) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestPID1Signals$")
	cmd.Env = append(os.Environ(), signalsChildEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if pid1 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if pid1 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
			t.Skipf("no PID namespace for the child (needs CAP_SYS_ADMIN): %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	lines := bufio.NewReader(out)
	if line, err := lines.ReadString('\n'); line != "ready\n" {
		t.Fatalf("child said %q, %v; stderr:\n%s", line, err, stderr.String())
	}
	// exited reports how the child ended and what it printed after ready.
	type end struct {
		err  error
		rest string
	}
	exited := make(chan end, 1)
	go func() {
		// Wait closes the pipe: read it all first.
		rest, _ := io.ReadAll(lines)
		exited <- end{cmd.Wait(), string(rest)}
	}()

	for _, sig := range survivedSignals {
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatalf("send %v: %v", sig, err)
		}
	}
	// A signal that ends the child does so well within this.
	time.Sleep(300 * time.Millisecond)
	select {
	case e := <-exited:
		t.Fatalf("the child ended (%v) on one of %v; stderr:\n%s", e.err, survivedSignals, stderr.String())
	default:
	}
	if err := cmd.Process.Signal(off); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-exited:
		if e.err != nil || e.rest != "power-off\n" {
			t.Fatalf("after %v: child ended with %v, printing %q; want exit 0 after power-off; stderr:\n%s", off, e.err, e.rest, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the child did not power off on %v", off)
	}
	for _, sig := range survivedSignals {
		if !strings.Contains(stderr.String(), sig.String()) {
			t.Errorf("%v was not logged; stderr:\n%s", sig, stderr.String())
		}
	}
}
