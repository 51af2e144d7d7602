package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
)

// relayVM is the VM the relayed measurements and memory use; it stays up.
const relayVM = "bench"

const warmup = 20

func benchRPC(ctx context.Context, e *env, calls int, t *table) error {
	echo, err := rawEcho(ctx, e, calls)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	direct, err := directRPC(ctx, e, calls)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	relayed, err := relayedRPC(ctx, e, calls)
	if err != nil {
		return fmt.Errorf("relayed: %w", err)
	}
	// For reference: a call cabind answers itself, i.e. the client's own
	// hop to cabind, which every relayed call also makes.
	local, err := timeCalls(calls, func() error {
		_, err := concierge.NewVmConciergeClient(e.cc).GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: relayVM})
		return err
	})
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	base := median(echo)
	t.add(row{metric: "rpc: GetKernelVersion direct over the channel", value: median(direct),
		baseline: "raw 64-byte echo, same port", base: base, goal: 2,
		detail: fmt.Sprintf("direct %s, echo %s", spread(direct), spread(echo))})
	t.add(row{metric: "rpc: GetKernelVersion through cabind's relay", value: median(relayed),
		baseline: "raw 64-byte echo, same port", base: base, goal: 2.5,
		detail: fmt.Sprintf("relayed %s; for reference, a call cabind answers itself (GetVmInfo) %s", spread(relayed), spread(local))})
	return nil
}

// rawEcho boots a VM whose agent echoes raw bytes and times 64-byte round
// trips on its RPC port, the port unary calls use.
func rawEcho(ctx context.Context, e *env, calls int) ([]time.Duration, error) {
	vm, dir, err := e.launchDirect(ctx, "echo", bootcfg.ModeEcho)
	if err != nil {
		return nil, err
	}
	defer kill(vm)
	conn, err := net.Dial("unix", dir.RPCSocket())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := vm.Resume(ctx); err != nil {
		return nil, err
	}
	msg := bytes.Repeat([]byte("x"), 64)
	buf := make([]byte, 64)
	roundTrip := func() error {
		if _, err := conn.Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, buf)
		return err
	}
	// The first round trip waits for the guest to boot.
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	for i := 0; i < warmup; i++ {
		if err := roundTrip(); err != nil {
			return nil, err
		}
	}
	conn.SetDeadline(time.Time{})
	return timeCalls(calls, func() error { return roundTrip() })
}

// startupAck answers the agent's VmReady on a directly attached channel.
type startupAck struct {
	vmtools.UnimplementedStartupListenerServer
	ready chan struct{}
}

func (s *startupAck) VmReady(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	return &vmtools.EmptyMessage{}, nil
}

// directRPC boots a VM without cabind and calls its agent over the
// channel, as cabind itself does.
func directRPC(ctx context.Context, e *env, calls int) ([]time.Duration, error) {
	vm, dir, err := e.launchDirect(ctx, "direct", bootcfg.ModeServe)
	if err != nil {
		return nil, err
	}
	defer kill(vm)
	sess, err := channel.DialSocket(dir.AgentSocket(), e.log)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	ack := &startupAck{ready: make(chan struct{})}
	srv := channel.NewServer(e.log)
	vmtools.RegisterStartupListenerServer(srv, ack)
	go srv.Serve(sess)
	defer srv.Stop()
	if err := vm.Resume(ctx); err != nil {
		return nil, err
	}
	select {
	case <-ack.ready:
	case <-time.After(60 * time.Second):
		return nil, errors.New("agent did not report in")
	}
	cc, err := channel.Dial(sess, dir.RPCSocket())
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return callKernelVersion(ctx, vmtools.NewMaitredClient(cc), func(ctx context.Context) context.Context { return ctx }, calls)
}

// relayedRPC starts the bench VM through cabind and calls its agent through
// cabind's socket.
func relayedRPC(ctx context.Context, e *env, calls int) ([]time.Duration, error) {
	if _, err := startThroughDaemon(ctx, e, relayVM); err != nil {
		return nil, err
	}
	return callKernelVersion(ctx, vmtools.NewMaitredClient(e.cc), func(ctx context.Context) context.Context { return toVM(ctx, relayVM) }, calls)
}

func callKernelVersion(ctx context.Context, c vmtools.MaitredClient, route func(context.Context) context.Context, calls int) ([]time.Duration, error) {
	// Right after VmReady the guest loads its late kernel modules, which
	// takes its CPU for most of a second. Mount waits for them: a tmpfs
	// mount returns once the guest has settled.
	mount, err := c.Mount(route(ctx), &vmtools.MountRequest{Source: "tmpfs", Target: "/run/bench", Fstype: "tmpfs", CreateTarget: true})
	if err != nil {
		return nil, fmt.Errorf("settle: %w", err)
	}
	if mount.GetError() != 0 {
		return nil, fmt.Errorf("settle: mount error %d", mount.GetError())
	}
	call := func() error {
		_, err := c.GetKernelVersion(route(ctx), &vmtools.EmptyMessage{})
		return err
	}
	for i := 0; i < warmup; i++ {
		if err := call(); err != nil {
			return nil, err
		}
	}
	return timeCalls(calls, call)
}

func timeCalls(n int, call func() error) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := call(); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}
