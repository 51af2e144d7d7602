package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/metadata"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/relay"
)

// The suspend measurement's sizes.
const (
	suspendRounds = 40
	stopRuns      = 4
)

// benchSuspend measures, in one run:
//
//   - a SuspendVm + ResumeVm round trip (the guest told, QMP stop, QMP
//     cont, the guest's clock set) against a GetVmInfo round trip, which
//     is the cost of a call to cabind that touches neither guest nor
//     QEMU; taking turns, on one VM;
//   - StopVm of a cooperative guest against the guest's own `poweroff
//     -f`: both timed from the call that sets them off to the
//     VmStoppedSignal, which cabind sends once QEMU is gone and what the
//     VM held is released. The guest's poweroff syncs and powers off at
//     once; StopVm adds the Shutdown RPC, the agent's SIGTERM to every
//     process (none here), and cabind's noticing. Boots alternate which
//     way goes first.
func benchSuspend(ctx context.Context, e *env, t *table) error {
	c := concierge.NewVmConciergeClient(e.cc)
	const name = "suspend0"
	if _, err := startThroughDaemon(ctx, e.cc, name); err != nil {
		return err
	}
	var round, info []time.Duration
	for i := 0; i < suspendRounds; i++ {
		start := time.Now()
		s, err := c.SuspendVm(ctx, &concierge.SuspendVmRequest{Name: name})
		if err == nil && !s.GetSuccess() {
			err = errors.New(s.GetFailureReason())
		}
		if err != nil {
			return fmt.Errorf("suspend: %w", err)
		}
		r, err := c.ResumeVm(ctx, &concierge.ResumeVmRequest{Name: name})
		if err == nil && !r.GetSuccess() {
			err = errors.New(r.GetFailureReason())
		}
		if err != nil {
			return fmt.Errorf("resume: %w", err)
		}
		round = append(round, time.Since(start))
		start = time.Now()
		if in, err := c.GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: name}); err != nil || !in.GetSuccess() {
			return fmt.Errorf("GetVmInfo: %v, %v", in, err)
		}
		info = append(info, time.Since(start))
	}
	if _, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: name}); err != nil {
		return err
	}
	t.add(row{
		metric:   "suspend→resume round trip",
		value:    median(round),
		baseline: "GetVmInfo round trip",
		base:     median(info),
		detail:   fmt.Sprintf("suspend+resume %s, GetVmInfo %s", spread(round), spread(info)),
	})

	var stops, poweroffs []time.Duration
	for i := 0; i < stopRuns; i++ {
		ways := []bool{true, false}
		if i%2 == 1 {
			ways = []bool{false, true}
		}
		for _, viaStop := range ways {
			vm := fmt.Sprintf("stop%d", i)
			if !viaStop {
				vm = fmt.Sprintf("poweroff%d", i)
			}
			d, err := timeStop(ctx, e, vm, viaStop)
			if err != nil {
				return fmt.Errorf("%s: %w", vm, err)
			}
			if viaStop {
				stops = append(stops, d)
			} else {
				poweroffs = append(poweroffs, d)
			}
		}
	}
	t.add(row{
		metric:   "StopVm of a cooperative guest → VmStopped",
		value:    median(stops),
		baseline: "guest's poweroff -f → VmStopped",
		base:     median(poweroffs),
		detail:   fmt.Sprintf("StopVm %s, poweroff %s", spread(stops), spread(poweroffs)),
	})
	return nil
}

// timeStop boots vm, then stops it through StopVm (viaStop) or by
// running `poweroff -f` in its guest, and times it to VmStoppedSignal.
func timeStop(ctx context.Context, e *env, vm string, viaStop bool) (time.Duration, error) {
	if _, err := startThroughDaemon(ctx, e.cc, vm); err != nil {
		return 0, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := cabinv1.NewEventsClient(e.cc).Watch(wctx, &cabinv1.WatchRequest{VmName: vm})
	if err != nil {
		return 0, err
	}
	if _, err := events.Header(); err != nil {
		return 0, err
	}
	start := time.Now()
	if viaStop {
		go concierge.NewVmConciergeClient(e.cc).StopVm(wctx, &concierge.StopVmRequest{Name: vm})
	} else {
		go poweroff(metadata.AppendToOutgoingContext(wctx, relay.MetadataVM, vm), e)
	}
	for {
		ev, err := events.Recv()
		if err != nil {
			return 0, err
		}
		if ev.GetVmStopped() != nil {
			return time.Since(start), nil
		}
	}
}

// poweroff runs `poweroff -f` in the guest ctx names. The exec ends with
// the VM, so its outcome says nothing.
func poweroff(ctx context.Context, e *env) {
	stream, err := execv1.NewExecClient(e.cc).Exec(ctx)
	if err != nil {
		return
	}
	start := &execv1.ExecStart{Argv: []string{"poweroff", "-f"}}
	if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: start}}); err != nil {
		return
	}
	stream.CloseSend()
	for {
		if _, err := stream.Recv(); err != nil {
			return
		}
	}
}
