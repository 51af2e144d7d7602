package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/cabinvm/cabin/internal/guestimage"
	"github.com/cabinvm/cabin/internal/metrics"
	"github.com/cabinvm/cabin/internal/relay"
	"github.com/cabinvm/cabin/internal/server"
	"github.com/cabinvm/cabin/internal/vmm"
)

// serveMetrics has the server, the relay, the image builder and the VM
// manager report to Prometheus metrics served on addr until ctx ends.
// The address is opened before it returns, so a taken one fails the
// start.
func serveMetrics(ctx context.Context, addr string, m *vmm.Manager, srv *server.Server, r *relay.Relay, b *guestimage.Builder, log *slog.Logger) error {
	lis, err := metrics.Listen(addr)
	if err != nil {
		return err
	}
	met := metrics.New(func() []metrics.VM {
		var out []metrics.VM
		for _, info := range m.ListAll() {
			out = append(out, metrics.VM{Owner: info.Owner, Name: info.Name, PID: info.PID})
		}
		return out
	})
	srv.Observe(met.ObserveCall)
	r.Count = met.Relayed
	b.Observe = met.ObserveImage
	go observeBoots(ctx, m, met)
	go met.Serve(ctx, lis, log)
	return nil
}

// observeBoots records every VM this daemon started (not one it adopted)
// as it comes up, until ctx ends. A subscription the bus dropped for
// falling behind is taken again.
func observeBoots(ctx context.Context, m *vmm.Manager, met *metrics.Metrics) {
	for ctx.Err() == nil {
		events, cancel := m.Subscribe()
	read:
		for {
			select {
			case <-ctx.Done():
				break read
			case ev, ok := <-events:
				if !ok {
					break read
				}
				if ev.Kind == vmm.EventStarted && !ev.Info.Adopted && !ev.Info.StartedAt.IsZero() {
					met.ObserveBoot(ev.Time.Sub(ev.Info.StartedAt))
				}
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
