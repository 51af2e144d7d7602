package guestinit

import (
	"bufio"
	"context"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// children is a Group of processes this test started, each waited for by
// a goroutine of its own.
type children struct {
	mu    sync.Mutex
	cmds  []*exec.Cmd
	exits map[int]*exec.ExitError // nil for a clean exit
	gone  map[int]bool
	sent  []syscall.Signal
}

var _ Group = (*children)(nil)

// start runs script in sh and returns once it has printed its first line,
// so that its traps are set.
func (c *children) start(t *testing.T, script string) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("%q did not start: %v", script, err)
	}
	pid := cmd.Process.Pid
	c.mu.Lock()
	c.cmds = append(c.cmds, cmd)
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		ee, _ := err.(*exec.ExitError)
		c.exits[pid], c.gone[pid] = ee, true
	}()
	return pid
}

func (c *children) SignalAll(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent = append(c.sent, sig)
	for _, cmd := range c.cmds {
		if !c.gone[cmd.Process.Pid] {
			cmd.Process.Signal(sig)
		}
	}
	return nil
}

func (c *children) Left() ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var left []int
	for _, cmd := range c.cmds {
		if !c.gone[cmd.Process.Pid] {
			left = append(left, cmd.Process.Pid)
		}
	}
	return left, nil
}

// TestTerminate: SIGTERM first; SIGKILL only for what is left after the
// grace, and not at all when everything exits on SIGTERM.
func TestTerminate(t *testing.T) {
	const grace = 500 * time.Millisecond
	const loop = "while :; do sleep .05; done"
	c := &children{exits: map[int]*exec.ExitError{}, gone: map[int]bool{}}
	polite := c.start(t, "trap 'exit 7' TERM; echo ready; "+loop)
	stubborn := c.start(t, "trap '' TERM; echo ready; "+loop)
	begin := time.Now()
	Terminate(context.Background(), testLog(), c, grace)
	took := time.Since(begin)

	if left, _ := c.Left(); len(left) != 0 {
		t.Fatalf("processes %v left after Terminate", left)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.exits[polite]; e == nil || e.ExitCode() != 7 {
		t.Errorf("the process trapping SIGTERM ended with %v, want its trap's exit 7", e)
	}
	if e := c.exits[stubborn]; e == nil || e.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("the process ignoring SIGTERM ended with %v, want SIGKILL", e)
	}
	if took < grace {
		t.Errorf("SIGKILL came after %v, before the %v grace", took, grace)
	}
	if want := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}; !slices.Equal(c.sent, want) {
		t.Errorf("sent %v, want %v", c.sent, want)
	}
}

func TestTerminateAllExitOnTerm(t *testing.T) {
	const grace = 5 * time.Second
	c := &children{exits: map[int]*exec.ExitError{}, gone: map[int]bool{}}
	c.start(t, "trap 'exit 0' TERM; echo ready; while :; do sleep .05; done")
	begin := time.Now()
	Terminate(context.Background(), testLog(), c, grace)
	if took := time.Since(begin); took >= grace {
		t.Errorf("Terminate took %v: it waited out the grace for a process that had gone", took)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if want := []syscall.Signal{syscall.SIGTERM}; !slices.Equal(c.sent, want) {
		t.Errorf("sent %v, want only %v", c.sent, want)
	}
}
