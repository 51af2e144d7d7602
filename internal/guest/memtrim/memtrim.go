// Package memtrim returns the agent's free memory to the guest kernel after
// large transfers. The Go runtime keeps the heap that a burst of streaming
// grew and gives it back only slowly (measured: an agent at 9 MiB after
// boot held 14.3 MiB after 120 MB of exec traffic, and still did twenty
// seconds later). In a small VM those megabytes belong to the workload.
package memtrim

import (
	"runtime/debug"
	"sync"
)

// DefaultThreshold is how many bytes must have moved before a trim is
// worth its cost, a full collection (a few milliseconds under emulation).
const DefaultThreshold = 4 << 20

// Trimmer counts the bytes finished transfers moved and, once threshold of
// them have, returns free memory to the kernel in the background. Trims
// never overlap; bytes counted during one count towards the next.
type Trimmer struct {
	threshold int64
	free      func()

	mu      sync.Mutex
	moved   int64
	running bool
	idle    *sync.Cond // signalled when a trim ends; for Wait
}

// New returns a Trimmer that trims with debug.FreeOSMemory once threshold
// bytes have moved.
func New(threshold int64) *Trimmer {
	return newTrimmer(threshold, debug.FreeOSMemory)
}

func newTrimmer(threshold int64, free func()) *Trimmer {
	t := &Trimmer{threshold: threshold, free: free}
	t.idle = sync.NewCond(&t.mu)
	return t
}

// Moved reports that a transfer ended having moved n bytes.
func (t *Trimmer) Moved(n int64) {
	if n <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.moved += n
	if t.moved < t.threshold || t.running {
		return
	}
	t.moved = 0
	t.running = true
	go t.trim()
}

func (t *Trimmer) trim() {
	t.free()
	t.mu.Lock()
	t.running = false
	t.idle.Broadcast()
	t.mu.Unlock()
}

// Wait returns once no trim is running.
func (t *Trimmer) Wait() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.running {
		t.idle.Wait()
	}
}
