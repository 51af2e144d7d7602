package agent

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
)

// VmReady is retried a few times in case the host is slow to serve its
// end; a host that never answers still gets the agent's services.
const (
	readyAttempts = 5
	readyTimeout  = 5 * time.Second
	readyBackoff  = 50 * time.Millisecond
)

// announce calls the host's StartupListener.VmReady over a stream it opens
// on sess. It is called on every new session: the host takes it
// idempotently, and after a host restart it is how the host learns the
// agent is there.
func announce(ctx context.Context, sess *channel.Session, log *slog.Logger) {
	cc, err := channel.Dial(sess, "")
	if err != nil {
		log.Warn("VmReady: client", "err", err)
		return
	}
	defer cc.Close()
	host := vmtools.NewStartupListenerClient(cc)
	delay := readyBackoff
	for attempt := 1; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, readyTimeout)
		_, err := host.VmReady(callCtx, &vmtools.EmptyMessage{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			log.Debug("VmReady acknowledged")
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt == readyAttempts {
			log.Warn("host did not acknowledge VmReady", "attempts", attempt, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay *= 2
	}
}
