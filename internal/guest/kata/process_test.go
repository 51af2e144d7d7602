package kata

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// These tests drive a process's stdio as the runtime's contract hands it
// over (fds 3, 4 and 5 are stdin, stdout and stderr), with sh standing in
// for the container's process, so that they run anywhere.

func startReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	r := reaper.New(false, testLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// startPiped runs script with the contract's stdio.
func startPiped(t *testing.T, r *reaper.Reaper, script string) *process {
	t.Helper()
	io, err := newStdio(false)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "exec 0<&3 1>&4 2>&5 3<&- 4>&- 5>&-; "+script)
	cmd.ExtraFiles = io.child
	pid, exits, err := r.StartCmd(cmd)
	io.closeChild()
	if err != nil {
		io.abort()
		t.Fatal(err)
	}
	p, err := newProcess("e1", pid, false, io, exits, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.release)
	return p
}

// readAllOut reads s until its end, with n a read.
func readAllOut(t *testing.T, s *outStream, n int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	for {
		b, err := s.Read(ctx, n)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", out.Len(), err)
		}
		if len(b) == 0 {
			return out.Bytes()
		}
		if len(b) > n && n > 0 {
			t.Fatalf("read %d bytes, asked for %d", len(b), n)
		}
		out.Write(b)
	}
}

func waitExit(t *testing.T, p *process) reaper.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := p.wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// pattern is what the scripts below write: numbered lines.
func pattern(lines int) string {
	var b strings.Builder
	for i := 1; i <= lines; i++ {
		b.WriteString("line ")
		b.WriteString(strings.Repeat("x", i%50))
		b.WriteString("\n")
	}
	return b.String()
}

// patternScript writes pattern(N).
const patternScript = `awk -v n=$N 'BEGIN { for (i = 1; i <= n; i++) { s = ""; for (j = 0; j < i % 50; j++) s = s "x"; print "line " s } }'`

// TestOutputNotLostAfterExit: what a process wrote before exiting is all
// read, whether it is read after the exit or while the process writes
// more than a pipe holds, and the end comes after it.
func TestOutputNotLostAfterExit(t *testing.T) {
	r := startReaper(t)
	// More than a pipe holds: the process exits right after its last
	// write, which waited for the reads.
	big := startPiped(t, r, "head -c 3000000 /dev/zero | tr '\\0' 'z'; exit 3")
	time.Sleep(100 * time.Millisecond)
	out := readAllOut(t, big.stdout, 0)
	if len(out) != 3000000 || bytes.Count(out, []byte("z")) != len(out) {
		t.Errorf("read %d bytes of 3000000", len(out))
	}
	if e := waitExit(t, big); e.Code != 3 {
		t.Errorf("exit %+v", e)
	}
	// Less than a pipe holds, all read after the exit.
	small := startPiped(t, r, "N=500; "+patternScript+"; echo err >&2")
	waitExit(t, small)
	if got, want := string(readAllOut(t, small.stdout, 100)), pattern(500); got != want {
		t.Errorf("stdout after the exit: %d bytes, want %d", len(got), len(want))
	}
	if got := string(readAllOut(t, small.stderr, 0)); got != "err\n" {
		t.Errorf("stderr %q", got)
	}
	// At the end, every read is empty.
	if b, err := small.stdout.Read(t.Context(), 10); err != nil || len(b) != 0 {
		t.Errorf("read past the end: %q, %v", b, err)
	}
}

// TestOutputEndsDespiteDescendants: a background child holding the pipe
// does not hold the end back long after the exit.
func TestOutputEndsDespiteDescendants(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "sleep 10 & echo hi")
	start := time.Now()
	if got := string(readAllOut(t, p.stdout, 0)); got != "hi\n" {
		t.Errorf("stdout %q", got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the end took %v: the sleeping child held it", took)
	}
}

// TestReadCancelled: a read that its caller gives up loses nothing for
// the next one.
func TestReadCancelled(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "read x; echo got $x")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if b, err := p.stdout.Read(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read with nothing written: %q, %v", b, err)
	}
	if _, err := p.stdin.Write(t.Context(), []byte("a\n")); err != nil {
		t.Fatal(err)
	}
	if got := string(readAllOut(t, p.stdout, 0)); got != "got a\n" {
		t.Errorf("stdout %q", got)
	}
}

func TestStdin(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "cat; echo eof")
	for _, s := range []string{"hello ", "world\n"} {
		if n, err := p.stdin.Write(t.Context(), []byte(s)); err != nil || n != len(s) {
			t.Fatalf("write %q: %d, %v", s, n, err)
		}
	}
	if err := p.stdin.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.stdin.Write(t.Context(), []byte("late")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("write after close: %v, want FailedPrecondition", err)
	}
	if got := string(readAllOut(t, p.stdout, 0)); got != "hello world\neof\n" {
		t.Errorf("stdout %q", got)
	}
	waitExit(t, p)
	if _, err := p.stdin.Write(t.Context(), []byte("late")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("write after exit: %v, want FailedPrecondition", err)
	}
}

// TestStdinWriteWokenByExit: a write blocked on a process that never
// reads its stdin returns once the process exits.
func TestStdinWriteWokenByExit(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "sleep 10 <&- & sleep 0.3")
	done := make(chan error, 1)
	go func() {
		_, err := p.stdin.Write(context.Background(), make([]byte, 4<<20))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("write: %v, want FailedPrecondition", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked after the exit")
	}
}

func TestSignalAfterExit(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "exit 0")
	waitExit(t, p)
	if err := p.signal(9); err != nil {
		t.Errorf("signal after exit: %v", err)
	}
	q := startPiped(t, r, "sleep 10")
	if err := q.signal(15); err != nil {
		t.Fatal(err)
	}
	if e := waitExit(t, q); e.Signal != 15 {
		t.Errorf("exit %+v, want SIGTERM", e)
	}
}

// TestCatches reads the caught signals of real processes.
func TestCatches(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done")
	if b, err := p.stdout.Read(t.Context(), 0); err != nil || string(b) != "ready\n" {
		t.Fatalf("read %q, %v", b, err)
	}
	if !catches(p.pid, 15) {
		t.Error("trap TERM not seen")
	}
	q := startPiped(t, r, "exec sleep 10")
	time.Sleep(50 * time.Millisecond)
	if catches(q.pid, 15) {
		t.Error("sleep catches SIGTERM?")
	}
	q.signal(9)
	p.signal(9)
}

// TestProcessRefusesBadPid: a pid gone wrong (os.Process.Release leaves
// -1 behind) must never make a process, whose signals would then go to
// every process (reaper.Kill refuses them too; see its tests).
func TestProcessRefusesBadPid(t *testing.T) {
	for _, pid := range []int{-1, 0, 1} {
		if _, err := newProcess("e", pid, false, &stdio{}, nil, testLog()); err == nil {
			t.Errorf("a process with pid %d was made", pid)
		}
	}
}

// TestCheckAdopted: a container process must have come to the agent.
func TestCheckAdopted(t *testing.T) {
	r := startReaper(t)
	p := startPiped(t, r, "read x")
	if err := checkAdopted(p.pid); err != nil {
		t.Errorf("own child: %v", err)
	}
	p.stdin.Close(t.Context())
	waitExit(t, p)
	if err := checkAdopted(p.pid); err != nil {
		t.Errorf("reaped child: %v", err)
	}
	// PID 1 is nobody's child here.
	if err := checkAdopted(1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("pid 1: %v, want FailedPrecondition", err)
	}
}
