package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// benchBoot times boots both ways in pairs, taking turns at going first
// in a pair, so that drift in the host's load, and whatever one boot leaves
// for the next (a QEMU still exiting, the page cache), hit both alike.
func benchBoot(ctx context.Context, e *env, runs int, t *table) error {
	var direct, daemon []time.Duration
	for i := 0; i < runs; i++ {
		first, second := "direct", "cabind"
		if i%2 == 1 {
			first, second = second, first
		}
		for _, way := range []string{first, second} {
			var (
				d   time.Duration
				err error
			)
			if way == "direct" {
				d, err = bootDirect(ctx, e, fmt.Sprintf("direct%d", i))
				direct = append(direct, d)
			} else {
				d, err = bootDaemon(ctx, e, fmt.Sprintf("boot%d", i))
				daemon = append(daemon, d)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", way, err)
			}
		}
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

// bootDaemon times a start through cabind (startThroughDaemon), then stops
// the VM.
func bootDaemon(ctx context.Context, e *env, name string) (time.Duration, error) {
	d, err := startThroughDaemon(ctx, e.cc, name)
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

// startThroughDaemon starts a VM through the cabind at cc and times it to
// VmStartedSignal, as a client sees it; the VM keeps running.
func startThroughDaemon(ctx context.Context, cc *grpc.ClientConn, name string) (time.Duration, error) {
	d, _, err := startAndWait(ctx, cc, &cabinv1.StartVmRequest{
		Request:   &concierge.StartVmRequest{Name: name, Cpus: benchCPUs},
		MemoryMib: benchMemoryMiB,
	})
	return d, err
}

// startAndWait starts the VM req describes and waits for its
// VmStartedSignal, watching from before the start; it returns the time
// from StartVm to the signal, and StartVm's answer.
func startAndWait(ctx context.Context, cc *grpc.ClientConn, req *cabinv1.StartVmRequest) (time.Duration, *concierge.StartVmResponse, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := cabinv1.NewEventsClient(cc).Watch(wctx, &cabinv1.WatchRequest{VmName: req.GetRequest().GetName()})
	if err != nil {
		return 0, nil, err
	}
	if _, err := events.Header(); err != nil {
		return 0, nil, err
	}
	start := time.Now()
	resp, err := cabinv1.NewVmsClient(cc).StartVm(ctx, req)
	if err != nil {
		return 0, nil, err
	}
	if !resp.GetSuccess() {
		return 0, nil, errors.New(resp.GetFailureReason())
	}
	for {
		ev, err := events.Recv()
		if err != nil {
			return 0, nil, err
		}
		if ev.GetVmStarted() != nil {
			return time.Since(start), resp, nil
		}
		if ev.GetVmStopped() != nil {
			return 0, nil, errors.New("vm stopped while starting")
		}
	}
}
