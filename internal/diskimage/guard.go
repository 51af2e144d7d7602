package diskimage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultStall is how long a streamed export or import waits on a client
// that takes or gives no data. A client that reads or writes at all moves
// a chunk (1 MiB, within gRPC's flow-control window) in far less; one
// that does nothing for a minute has stopped or hung, and would otherwise
// hold the image (no VM starts on it, no other operation runs on it) for
// as long as it keeps its connection open.
const DefaultStall = time.Minute

// ErrBlocked is in the error of an Export or Import that ended while a
// call to its sink or source had not returned: that call may still be
// under way. The caller must make it return (a gRPC handler does so by
// returning, which ends the stream) and must not use the sink or source
// again.
var ErrBlocked = errors.New("the client's stream is blocked")

// guard makes an operation's calls into a peer it does not control (a
// client's stream behind a Sink or Source) each on a goroutine of its
// own, and waits for a call only while the operation's context lasts and
// for at most stall: the operation ends however the peer behaves, and
// frees its image. The operation makes its calls one at a time, from one
// goroutine, and stops at the first error.
type guard struct {
	ctx   context.Context
	stall time.Duration
	// stalled says what a call that took too long means, for the error.
	stalled string

	mu sync.Mutex
	// closed: no call may start any more.
	closed bool
	// running: a call started and has not returned.
	running bool
}

func newGuard(ctx context.Context, stall time.Duration, stalled string) *guard {
	if stall <= 0 {
		stall = DefaultStall
	}
	return &guard{ctx: ctx, stall: stall, stalled: stalled}
}

func (g *guard) do(call func() error) error {
	done := make(chan error, 1)
	go func() {
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			done <- ErrCancelled
			return
		}
		g.running = true
		g.mu.Unlock()
		err := call()
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
		done <- err
	}()
	timer := time.NewTimer(g.stall)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-g.ctx.Done():
		select {
		case err := <-done:
			return err
		default:
		}
		return fmt.Errorf("%w (%w)", ErrCancelled, g.ctx.Err())
	case <-timer.C:
		return fmt.Errorf("%s for %v: %w", g.stalled, g.stall, context.DeadlineExceeded)
	}
}

// close lets no call start any more, and tells whether one is still under
// way (blocked in the peer).
func (g *guard) close() (blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return g.running
}

// end ends op with err once no call may start any more, and returns err,
// wrapping ErrBlocked when a call is still under way.
func (g *guard) end(op *Op, err error) error {
	blocked := g.close()
	op.finish(err)
	if !blocked {
		return err
	}
	op.s.log.Info("disk operation ended with its client's stream blocked", "command_uuid", op.UUID(), "kind", op.kind, "err", err)
	return fmt.Errorf("%w: %w", ErrBlocked, err)
}
