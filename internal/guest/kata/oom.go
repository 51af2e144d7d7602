package kata

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// maxOOMEvents bounds the OOM events kept for GetOOMEvent while nobody
// asks: past it the oldest go.
const maxOOMEvents = 256

// oomEvents is GetOOMEvent's queue, as Kata's agent has it: one queue of
// container ids, each event taken by one call, kept until a call takes
// it. The watcher is started with the first container.
type oomEvents struct {
	once    sync.Once
	watcher atomic.Pointer[cgroup.OOMWatcher]
	err     error

	mu    sync.Mutex
	queue []string
	// more is closed, and replaced, when an event is queued.
	more chan struct{}
}

func (o *oomEvents) watch(s *Sandbox, id, dir string) error {
	o.once.Do(func() {
		w, err := cgroup.NewOOMWatcher(func(id string) { o.push(s, id) })
		o.watcher.Store(w)
		o.err = err
	})
	if o.err != nil {
		return o.err
	}
	return o.watcher.Load().Add(id, dir)
}

func (o *oomEvents) unwatch(id string) {
	if w := o.watcher.Load(); w != nil {
		w.Remove(id)
	}
}

func (o *oomEvents) push(s *Sandbox, id string) {
	s.log.Warn("OOM killer took a process of container", "id", id)
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.queue) >= maxOOMEvents {
		s.log.Warn("OOM event dropped: nobody asked", "id", o.queue[0])
		o.queue = o.queue[1:]
	}
	o.queue = append(o.queue, id)
	if o.more != nil {
		close(o.more)
		o.more = nil
	}
}

// NextOOM waits for the next OOM kill in a container and returns the
// container's id; a kill no call has taken yet is returned at once. It
// ends with ctx, taking nothing.
func (s *Sandbox) NextOOM(ctx context.Context) (string, error) {
	o := &s.cg.oom
	for {
		o.mu.Lock()
		if len(o.queue) > 0 {
			id := o.queue[0]
			o.queue = o.queue[1:]
			o.mu.Unlock()
			return id, nil
		}
		if o.more == nil {
			o.more = make(chan struct{})
		}
		more := o.more
		o.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for an OOM event: %w", ctx.Err())
		}
	}
}
