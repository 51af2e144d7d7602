package guestinit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// readNice reads a thread's nice value from /proc (field 19 of stat).
func readNice(tid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		return 0, err
	}
	// The command, field 2, is in parentheses and may hold spaces.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	return strconv.Atoi(fields[16]) // field 19, counting from field 3
}

func threadNice(t *testing.T, tid int) int {
	t.Helper()
	n, err := readNice(tid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBackgroundRunsNicedUntilWaitedFor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising a thread's priority back to nice 0 needs root")
	}
	tids := make(chan int)
	release := make(chan struct{})
	failed := errors.New("work failed")
	b := NewBackground()
	b.Start(func() error {
		tids <- unix.Gettid()
		<-release
		return failed
	})
	tid := <-tids
	if tid == unix.Gettid() {
		t.Fatal("the work runs on the test's thread")
	}
	if got := threadNice(t, tid); got != BackgroundNice {
		t.Fatalf("nice while in the background = %d, want %d", got, BackgroundNice)
	}
	if got := threadNice(t, unix.Gettid()); got != 0 {
		t.Fatalf("the caller's nice = %d, want 0 (only the work's thread is lowered)", got)
	}

	// A waiter that gives up still raises the work's priority.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with the work blocked = %v, want the context's deadline", err)
	}
	if got := threadNice(t, tid); got != 0 {
		t.Fatalf("nice once waited for = %d, want 0", got)
	}

	close(release)
	if err := b.Wait(context.Background()); err != failed {
		t.Fatalf("Wait = %v, want the work's error", err)
	}
	// Done work answers again, at once.
	if err := b.Wait(context.Background()); err != failed {
		t.Fatalf("second Wait = %v, want the work's error", err)
	}
}

func TestBackgroundWaitedForBeforeItStarts(t *testing.T) {
	b := NewBackground()
	// The waiter comes before the work's thread is known: the work then
	// never lowers itself.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait before the work started = %v, want the context's error", err)
	}
	nice := make(chan int, 1)
	b.Start(func() error {
		// Read on the work's own thread, before it ends.
		n, err := readNice(unix.Gettid())
		nice <- n
		return err
	})
	if err := b.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := <-nice; got != 0 {
		t.Fatalf("nice of work waited for before it started = %d, want 0", got)
	}
}
