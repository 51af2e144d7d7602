package guestinit

import (
	"context"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// BackgroundNice is the nice value background work starts at: the lowest
// priority short of SCHED_IDLE. Against a busy thread of nice 0 it gets
// about 1.5% of a CPU, so it never starves, yet it barely delays the
// agent's answers while the host brings the VM up.
const BackgroundNice = 19

// Background is work done on a thread of its own at BackgroundNice until
// someone waits for it; then it runs at normal priority, as the waiter
// needs it done.
type Background struct {
	done chan struct{}
	err  error

	mu     sync.Mutex
	tid    int  // the work's thread while it runs, else 0
	urgent bool // someone waits: run at normal priority
}

// NewBackground returns background work yet to start. Waiting for it
// before Start waits for the work Start is given, which then runs at
// normal priority.
func NewBackground() *Background {
	return &Background{done: make(chan struct{})}
}

// Start runs work in the background. Call it once.
func (b *Background) Start(work func() error) {
	go b.run(work)
}

func (b *Background) run(work func() error) {
	// The thread is never unlocked, so it exits with this goroutine and
	// its priority goes with it, not back to the runtime's pool.
	runtime.LockOSThread()
	defer close(b.done)
	b.mu.Lock()
	b.tid = unix.Gettid()
	if !b.urgent {
		// Best effort: at normal priority the work is only less polite.
		unix.Setpriority(unix.PRIO_PROCESS, b.tid, BackgroundNice)
	}
	b.mu.Unlock()
	err := work()
	b.mu.Lock()
	// Cleared while the thread still lives: Wait never touches another
	// thread that has since been given the same id.
	b.tid = 0
	b.mu.Unlock()
	b.err = err
}

// Wait raises the work to normal priority and waits for it to finish. It
// returns the work's error, or ctx's if ctx ends first.
func (b *Background) Wait(ctx context.Context) error {
	b.Hurry()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Hurry raises the work to normal priority, as Wait does, without waiting
// for it: for a waiter that needs only part of it done.
func (b *Background) Hurry() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.urgent {
		return
	}
	b.urgent = true
	if b.tid != 0 {
		// Lowering a nice value needs CAP_SYS_NICE, which PID 1 has;
		// without it the work still finishes, only later.
		unix.Setpriority(unix.PRIO_PROCESS, b.tid, 0)
	}
}
