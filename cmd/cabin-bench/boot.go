package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// benchBoot times boots both ways, alternating so that drift in the host's
// load hits both alike.
func benchBoot(ctx context.Context, e *env, runs int, t *table) error {
	var direct, daemon []time.Duration
	for i := 0; i < runs; i++ {
		d, err := bootDirect(ctx, e, fmt.Sprintf("direct%d", i))
		if err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		direct = append(direct, d)
		c, err := bootDaemon(ctx, e, fmt.Sprintf("boot%d", i))
		if err != nil {
			return fmt.Errorf("cabind: %w", err)
		}
		daemon = append(daemon, c)
	}
	t.add(row{
		metric:   "boot: StartVm → VmStartedSignal",
		value:    median(daemon),
		baseline: "QEMU direct → agent's first byte",
		base:     median(direct),
		goal:     1.05,
		detail:   fmt.Sprintf("cabind %s, direct %s", spread(daemon), spread(direct)),
	})
	return nil
}

// bootDirect launches the VM cabind would launch and times it to the first
// byte the agent sends.
func bootDirect(ctx context.Context, e *env, name string) (time.Duration, error) {
	start := time.Now()
	vm, dir, err := e.launchDirect(ctx, name, bootcfg.ModeServe)
	if err != nil {
		return 0, err
	}
	defer kill(vm)
	conn, err := net.Dial("unix", dir.AgentSocket())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if err := vm.Resume(ctx); err != nil {
		return 0, err
	}
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return 0, fmt.Errorf("no byte from the agent: %w", err)
	}
	return time.Since(start), nil
}

// bootDaemon starts a VM through cabind, times it to VmStartedSignal as a
// client sees it, then stops it.
func bootDaemon(ctx context.Context, e *env, name string) (time.Duration, error) {
	d, err := bootDaemonKeep(ctx, e, name)
	if err != nil {
		return 0, err
	}
	stop, err := concierge.NewVmConciergeClient(e.cc).StopVm(ctx, &concierge.StopVmRequest{Name: name})
	if err != nil {
		return 0, err
	}
	if !stop.GetSuccess() {
		return 0, errors.New(stop.GetFailureReason())
	}
	return d, nil
}
