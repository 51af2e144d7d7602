package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

var _ hypervisor.Balloon = (*vm)(nil)

// balloonID is the id of every VM's balloon device, and balloonPath its
// QOM path, where its guest-stats properties are. virtio-balloon-pci
// aliases them from its virtio device, so the path is the same on q35.
const (
	balloonID   = "balloon0"
	balloonPath = "/machine/peripheral/" + balloonID
)

// balloonArgs gives the guest a virtio-balloon on the machine's bus.
//
//   - free-page-reporting=on: the guest reports free blocks of its memory
//     (2 MiB and larger, once free for a couple of seconds) and QEMU
//     discards their backing, so a guest gives back what it stops using
//     with no call from the host. Debian's guest kernel has
//     CONFIG_PAGE_REPORTING=y and virtio_balloon as a module; QEMU 7.2
//     has the property.
//   - deflate-on-oom=on: a guest about to kill a process for memory takes
//     pages back from the balloon first, so no target the host sets can
//     OOM it. The guest then leaves its MemTotal alone as the balloon
//     grows (it shows in MemFree and MemAvailable instead).
//
// Its stats are not polled: QEMU asks the guest only when BalloonStats
// needs them, so an idle guest is not woken every few seconds for
// nothing.
func balloonArgs(machine hypervisor.Machine) []string {
	dev := "virtio-balloon-device" // on virtio-mmio
	if machine == hypervisor.MachineQ35 {
		dev = "virtio-balloon-pci"
	}
	return []string{"-device", dev + ",id=" + balloonID + ",deflate-on-oom=on,free-page-reporting=on"}
}

// defaultStatsWait bounds how long BalloonStats waits for the guest to
// report once asked: under TCG a guest answers within tens of
// milliseconds; one that does not within seconds has no driver (yet) or
// is paused.
const defaultStatsWait = 5 * time.Second

// statsPoll is how often BalloonStats looks for the guest's report.
const statsPoll = 20 * time.Millisecond

// balloonState is what a vm keeps for its balloon.
type balloonState struct {
	// mu serializes the calls that set the stats' polling interval, so
	// one does not switch polling off under another.
	mu sync.Mutex
	// ram is the guest's RAM in bytes, 0 until asked of QEMU.
	ram int64
	// wait is how long to wait for the guest's statistics;
	// defaultStatsWait when 0.
	wait time.Duration
}

// memory returns the guest's RAM, asked of QEMU once
// (query-memory-size-summary): an adopted VM's launch config is not at
// hand.
func (v *vm) memory(ctx context.Context, qmp *Client) (int64, error) {
	v.balloon.mu.Lock()
	ram := v.balloon.ram
	v.balloon.mu.Unlock()
	if ram > 0 {
		return ram, nil
	}
	var sum struct {
		Base int64 `json:"base-memory"`
	}
	if err := qmp.Execute(ctx, "query-memory-size-summary", nil, &sum); err != nil {
		return 0, err
	}
	if sum.Base <= 0 {
		return 0, fmt.Errorf("qmp query-memory-size-summary: base-memory %d", sum.Base)
	}
	v.balloon.mu.Lock()
	v.balloon.ram = sum.Base
	v.balloon.mu.Unlock()
	return sum.Base, nil
}

// SetBalloon sets the balloon's target (QMP balloon, whose value is the
// memory the guest keeps, not the balloon's size).
func (v *vm) SetBalloon(ctx context.Context, size int64) error {
	qmp, err := v.monitor()
	if err != nil {
		return fmt.Errorf("set balloon: %w", err)
	}
	ram, err := v.memory(ctx, qmp)
	if err != nil {
		return fmt.Errorf("set balloon: %w", err)
	}
	// QEMU takes no target of 0 (a guest with no memory) and clamps one
	// above the RAM: both are the caller's mistake.
	if size < 0 || size >= ram {
		return errdefs.InvalidArgument("size", fmt.Sprintf("%d bytes: want 0 to %d, less than the guest's %d bytes of RAM", size, ram-1, ram))
	}
	if err := qmp.Execute(ctx, "balloon", map[string]int64{"value": ram - size}, nil); err != nil {
		return fmt.Errorf("set balloon: %w", err)
	}
	return nil
}

// BalloonSize is the balloon's size now (query-balloon, whose actual is
// the memory the guest keeps).
func (v *vm) BalloonSize(ctx context.Context) (int64, error) {
	qmp, err := v.monitor()
	if err != nil {
		return 0, fmt.Errorf("balloon size: %w", err)
	}
	ram, err := v.memory(ctx, qmp)
	if err != nil {
		return 0, fmt.Errorf("balloon size: %w", err)
	}
	size, err := balloonSize(ctx, qmp, ram)
	if err != nil {
		return 0, fmt.Errorf("balloon size: %w", err)
	}
	return size, nil
}

func balloonSize(ctx context.Context, qmp *Client, ram int64) (int64, error) {
	var b struct {
		Actual int64 `json:"actual"`
	}
	if err := qmp.Execute(ctx, "query-balloon", nil, &b); err != nil {
		return 0, err
	}
	return min(max(ram-b.Actual, 0), ram), nil
}

// BalloonStats reads the guest's statistics (qom-get guest-stats) and the
// balloon's size (query-balloon). When the guest's last report is older
// than since, it is asked: switching the device's polling on
// (guest-stats-polling-interval) makes QEMU ask at once, and it is
// switched off again once the guest answered.
func (v *vm) BalloonStats(ctx context.Context, since time.Time) (hypervisor.BalloonStats, error) {
	qmp, err := v.monitor()
	if err != nil {
		return hypervisor.BalloonStats{}, fmt.Errorf("balloon stats: %w", err)
	}
	ram, err := v.memory(ctx, qmp)
	if err != nil {
		return hypervisor.BalloonStats{}, fmt.Errorf("balloon stats: %w", err)
	}
	st, err := v.freshStats(ctx, qmp, since)
	if err != nil {
		return hypervisor.BalloonStats{}, fmt.Errorf("balloon stats: %w", err)
	}
	if st.Size, err = balloonSize(ctx, qmp, ram); err != nil {
		return hypervisor.BalloonStats{}, fmt.Errorf("balloon stats: %w", err)
	}
	st.Memory = ram
	return st, nil
}

// freshStats returns the guest's statistics as reported at since or
// later, asking the guest for them when they are older.
func (v *vm) freshStats(ctx context.Context, qmp *Client, since time.Time) (hypervisor.BalloonStats, error) {
	v.balloon.mu.Lock()
	defer v.balloon.mu.Unlock()
	st, err := guestStats(ctx, qmp)
	if err != nil {
		return st, err
	}
	// QEMU stamps a report with the wall clock in whole seconds: one
	// made at since or later is stamped at least since rounded up.
	need := since.Unix()
	if since.Nanosecond() > 0 {
		need++
	}
	if !st.Updated.IsZero() && st.Updated.Unix() >= need {
		return st, nil
	}
	// 0 first: setting the interval of polling that is on only moves its
	// next tick; switching it on asks at once.
	if err := setPolling(ctx, qmp, 0); err != nil {
		return st, err
	}
	if err := setPolling(ctx, qmp, 1); err != nil {
		return st, err
	}
	defer func() {
		// Off even when ctx has ended: polling left on wakes the guest
		// every second for the VM's life.
		octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := setPolling(octx, qmp, 0); err != nil {
			v.log.Warn("balloon: cannot switch stats polling off", "err", err)
		}
	}()
	wait := v.balloon.wait
	if wait <= 0 {
		wait = defaultStatsWait
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	t := time.NewTicker(statsPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-deadline.C:
			return st, fmt.Errorf("the guest did not report its memory statistics within %v (no virtio_balloon driver, or its vCPUs are paused): %w",
				wait, errdefs.ErrUnavailable)
		case <-t.C:
		}
		// A command sent with a context already ended would fail the
		// monitor connection (its write deadline is in the past).
		if err := ctx.Err(); err != nil {
			return st, err
		}
		next, err := guestStats(ctx, qmp)
		if err != nil {
			return st, err
		}
		// While it waits, polling asks again every second, so a report
		// made in the second since falls in is followed by a later one.
		if !next.Updated.IsZero() && next.Updated.Unix() >= need {
			return next, nil
		}
	}
}

// setPolling sets how often, in seconds, QEMU asks the guest for its
// statistics; 0 for never.
func setPolling(ctx context.Context, qmp *Client, seconds int) error {
	return qmp.Execute(ctx, "qom-set", map[string]any{
		"path": balloonPath, "property": "guest-stats-polling-interval", "value": seconds,
	}, nil)
}

// guestStats reads the device's last statistics from the guest.
func guestStats(ctx context.Context, qmp *Client) (hypervisor.BalloonStats, error) {
	var raw json.RawMessage
	if err := qmp.Execute(ctx, "qom-get", map[string]string{"path": balloonPath, "property": "guest-stats"}, &raw); err != nil {
		return hypervisor.BalloonStats{}, err
	}
	return parseGuestStats(raw)
}

// parseGuestStats decodes the guest-stats property (QEMU's
// docs/interop/virtio-balloon-stats.rst): each statistic an unsigned
// number, -1 as an unsigned 64-bit number for one the guest did not
// report, and last-update the wall clock's seconds at the report, 0
// before the first. It comes from QEMU, which has it from the guest:
// values are bounded, not trusted.
func parseGuestStats(raw []byte) (hypervisor.BalloonStats, error) {
	var gs struct {
		Stats      map[string]json.Number `json:"stats"`
		LastUpdate json.Number            `json:"last-update"`
	}
	if err := json.Unmarshal(raw, &gs); err != nil {
		return hypervisor.BalloonStats{}, fmt.Errorf("guest-stats: %w", err)
	}
	get := func(name string) int64 {
		n, ok := gs.Stats[name]
		if !ok {
			return -1
		}
		v, err := n.Int64()
		if err != nil || v < 0 {
			// Unreported (2^64-1), or not a number a count can be.
			return -1
		}
		return v
	}
	st := hypervisor.BalloonStats{
		Total:       get("stat-total-memory"),
		Free:        get("stat-free-memory"),
		Available:   get("stat-available-memory"),
		Caches:      get("stat-disk-caches"),
		SwapIn:      get("stat-swap-in"),
		SwapOut:     get("stat-swap-out"),
		MajorFaults: get("stat-major-faults"),
		MinorFaults: get("stat-minor-faults"),
	}
	if last, err := gs.LastUpdate.Int64(); err == nil && last > 0 && last < math.MaxInt64/int64(time.Second) {
		st.Updated = time.Unix(last, 0)
	}
	return st, nil
}
