package execsvc

import (
	"context"
	"sync"
)

const (
	// stdinBudget bounds the stdin one Exec holds for a process that is
	// slow to read it: a MiB, the stream's flow-control window. Past it
	// the stream is not read until the process catches up, which holds the
	// client back through gRPC's flow control; one message is always let
	// in, however large.
	stdinBudget = 1 << 20
	// stdinOpCost is the least a queued request counts against the budget,
	// so that empty ones cannot pile up without limit.
	stdinOpCost = 64
)

// stdinOp is one request for the process's input: data, or its end.
type stdinOp struct {
	data  []byte
	close bool
}

func (op stdinOp) cost() int { return max(len(op.data), stdinOpCost) }

func (op stdinOp) apply(p *Process) error {
	if op.close {
		return p.CloseStdin()
	}
	return p.WriteStdin(op.data)
}

// stdinQueue takes a stream's stdin, and close_stdin, to the process in
// order on a goroutine of its own. A write blocks while the process does
// not read; with the queue, only later input waits for it, and signals and
// resizes, which the stream's reader applies itself, go through at once.
type stdinQueue struct {
	p *Process

	mu    sync.Mutex
	ops   []stdinOp // waiting, oldest first
	held  int       // the cost of ops and of the one being written
	ended bool      // nothing more will be put
	err   error     // the write that failed; nothing is written after it

	more chan struct{} // wakes the writer: an op was put, or the queue ended
	room chan struct{} // wakes put: the writer is done with an op
	done chan error    // the writer's result, once: nil or err
}

// newStdinQueue starts writing to p's stdin. The writer runs until end has
// been called and all before it is written, or a write fails.
func newStdinQueue(p *Process) *stdinQueue {
	q := &stdinQueue{
		p:    p,
		more: make(chan struct{}, 1),
		room: make(chan struct{}, 1),
		done: make(chan error, 1),
	}
	go q.write()
	return q
}

// Done receives the writer's result: nil once everything put before end is
// written, or the error of the write that failed.
func (q *stdinQueue) Done() <-chan error { return q.done }

// put queues op, waiting while the queue holds stdinBudget. It fails when
// ctx ends first or an earlier write failed (that error).
func (q *stdinQueue) put(ctx context.Context, op stdinOp) error {
	for {
		q.mu.Lock()
		if q.err != nil {
			err := q.err
			q.mu.Unlock()
			return err
		}
		if q.held == 0 || q.held+op.cost() <= stdinBudget {
			q.ops = append(q.ops, op)
			q.held += op.cost()
			q.mu.Unlock()
			wake(q.more)
			return nil
		}
		q.mu.Unlock()
		select {
		case <-q.room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// end tells the writer that nothing more will be put.
func (q *stdinQueue) end() {
	q.mu.Lock()
	q.ended = true
	q.mu.Unlock()
	wake(q.more)
}

func (q *stdinQueue) write() {
	for {
		op, ok := q.next()
		if !ok {
			q.done <- nil
			return
		}
		err := op.apply(q.p)
		q.mu.Lock()
		q.held -= op.cost()
		q.err = err
		q.mu.Unlock()
		wake(q.room)
		if err != nil {
			q.done <- err
			return
		}
	}
}

// next waits for the oldest op; false when the queue has ended and is
// empty.
func (q *stdinQueue) next() (stdinOp, bool) {
	for {
		q.mu.Lock()
		if len(q.ops) > 0 {
			op := q.ops[0]
			q.ops[0] = stdinOp{} // the data goes once written
			q.ops = q.ops[1:]
			q.mu.Unlock()
			return op, true
		}
		ended := q.ended
		q.mu.Unlock()
		if ended {
			return stdinOp{}, false
		}
		<-q.more
	}
}

// wake signals c without blocking; a signal already pending covers this
// one, since the waiter looks at the state again.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
