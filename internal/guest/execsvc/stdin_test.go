package execsvc

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/reaper"
)

// TestStdinQueueBounded feeds a process that never reads: the queue takes
// about stdinBudget beyond what the pipe holds, then put waits, and the
// wait ends with the caller's context. Once the process is gone the queue
// drains and ends.
func TestStdinQueueBounded(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := reaper.New(false, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	p, err := Start(r, Spec{Argv: []string{"sleep", "100"}, Stdin: true}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	pipe, err := unix.FcntlInt(p.stdin.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}

	q := newStdinQueue(p)
	chunk := make([]byte, chunkSize)
	accepted := 0
	for {
		putCtx, putCancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := q.put(putCtx, stdinOp{data: chunk})
		putCancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("put after %d bytes: %v", accepted, err)
		}
		accepted += len(chunk)
		if accepted > 4*stdinBudget {
			t.Fatalf("the queue took %d bytes and still takes more", accepted)
		}
	}
	// The pipe holds pipe bytes, the queue stdinBudget (in whole chunks),
	// and one chunk may be half written.
	if most := pipe + stdinBudget + chunkSize; accepted > most {
		t.Errorf("took %d bytes before waiting, want at most %d", accepted, most)
	}
	if least := stdinBudget - chunkSize; accepted < least {
		t.Errorf("took only %d bytes before waiting, want at least %d", accepted, least)
	}

	p.Kill()
	q.end()
	select {
	case err := <-q.Done():
		if err != nil {
			t.Fatalf("input to a killed process: %v, want it dropped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queue did not drain after the process was killed")
	}
}

// TestStdinQueueStopsAtError: once a write fails nothing more is written,
// and put reports the failure.
func TestStdinQueueStopsAtError(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := reaper.New(false, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	// No stdin attached: the first write fails.
	p, err := Start(r, Spec{Argv: []string{"sleep", "100"}}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	q := newStdinQueue(p)
	defer q.end()
	if err := q.put(ctx, stdinOp{data: []byte("x")}); err != nil {
		t.Fatalf("first put: %v", err)
	}
	select {
	case err := <-q.Done():
		if err == nil {
			t.Fatal("stdin to a process without it was accepted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no result from the writer")
	}
	if err := q.put(ctx, stdinOp{data: []byte("y")}); err == nil {
		t.Fatal("put after a failed write succeeded")
	}
}
