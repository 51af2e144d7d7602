package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
)

// relayVM is the VM the relayed measurements and memory use; it stays up.
const relayVM = "bench"

const warmup = 20

// rounds is how many slices the calls of each RPC measurement are cut
// into. The measurements take turns, slice by slice, so that the host's
// speed drifting during the run (on a shared host it does, by tens of
// percent) moves the baseline with the measurements instead of skewing
// their ratios.
const rounds = 20

// rpcTarget is one thing to time: call makes one round trip.
type rpcTarget struct {
	name     string
	call     func() error
	cleanups []func() // run last to first by close
	// conn is the raw echo's connection, for throughput (containers.go).
	conn net.Conn
}

func (t *rpcTarget) onClose(f func()) { t.cleanups = append(t.cleanups, f) }

func (t *rpcTarget) close() {
	for _, f := range slices.Backward(t.cleanups) {
		f()
	}
}

func benchRPC(ctx context.Context, e *env, calls int, t *table) error {
	echo, err := rawEcho(ctx, e)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	defer echo.close()
	direct, err := directRPC(ctx, e)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	defer direct.close()
	relayed, err := relayedRPC(ctx, e)
	if err != nil {
		return fmt.Errorf("relayed: %w", err)
	}
	// For reference: a call cabind answers itself, i.e. the client's own
	// hop to cabind, which every relayed call also makes.
	local := &rpcTarget{name: "local", call: func() error {
		_, err := concierge.NewVmConciergeClient(e.cc).GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: relayVM})
		return err
	}}
	got, err := interleave(calls, echo, direct, relayed, local)
	if err != nil {
		return err
	}
	base := median(got[0])
	t.add(row{metric: "rpc: GetKernelVersion direct over the channel", value: median(got[1]),
		baseline: "raw 64-byte echo, same port", base: base, goal: 2,
		detail: fmt.Sprintf("direct %s, echo %s", spread(got[1]), spread(got[0]))})
	t.add(row{metric: "rpc: GetKernelVersion through cabind's relay", value: median(got[2]),
		baseline: "raw 64-byte echo, same port", base: base, goal: 2.5,
		detail: fmt.Sprintf("relayed %s; for reference, a call cabind answers itself (GetVmInfo) %s", spread(got[2]), spread(got[3]))})
	return nil
}

// interleave times calls round trips of each target, taking turns in
// rounds, and returns the samples of each, in the order given.
func interleave(calls int, targets ...*rpcTarget) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(targets))
	per := max(calls/rounds, 1)
	for r := 0; r < rounds; r++ {
		// Rotate who goes first, so none always runs just after another.
		for i := range targets {
			k := (i + r) % len(targets)
			d, err := timeCalls(per, targets[k].call)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", targets[k].name, err)
			}
			out[k] = append(out[k], d...)
		}
	}
	return out, nil
}

// rawEcho boots a VM whose agent echoes raw bytes, for 64-byte round
// trips on its RPC port, the port unary calls use.
func rawEcho(ctx context.Context, e *env) (_ *rpcTarget, err error) {
	tg := &rpcTarget{name: "echo"}
	defer func() {
		if err != nil {
			tg.close()
		}
	}()
	vm, dir, err := e.launchDirect(ctx, "echo", bootcfg.ModeEcho)
	if err != nil {
		return nil, err
	}
	tg.onClose(func() { kill(vm) })
	conn, err := net.Dial("unix", dir.RPCSocket())
	if err != nil {
		return nil, err
	}
	tg.onClose(func() { conn.Close() })
	tg.conn = conn
	if err := vm.Resume(ctx); err != nil {
		return nil, err
	}
	msg := bytes.Repeat([]byte("x"), 64)
	buf := make([]byte, 64)
	tg.call = func() error {
		if _, err := conn.Write(msg); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, buf)
		return err
	}
	// The first round trip waits for the guest to boot.
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	for i := 0; i < warmup; i++ {
		if err := tg.call(); err != nil {
			return nil, err
		}
	}
	conn.SetDeadline(time.Time{})
	return tg, nil
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

// directRPC boots a VM without cabind, to call its agent over the
// channel as cabind itself does.
func directRPC(ctx context.Context, e *env) (_ *rpcTarget, err error) {
	tg := &rpcTarget{name: "direct"}
	defer func() {
		if err != nil {
			tg.close()
		}
	}()
	vm, dir, err := e.launchDirect(ctx, "direct", bootcfg.ModeServe)
	if err != nil {
		return nil, err
	}
	tg.onClose(func() { kill(vm) })
	sess, err := channel.DialSocket(dir.AgentSocket(), e.log)
	if err != nil {
		return nil, err
	}
	tg.onClose(func() { sess.Close() })
	ack := &startupAck{ready: make(chan struct{})}
	srv := channel.NewServer(e.log)
	vmtools.RegisterStartupListenerServer(srv, ack)
	go srv.Serve(sess)
	tg.onClose(srv.Stop)
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
	tg.onClose(func() { cc.Close() })
	if tg.call, err = kernelVersionCall(ctx, vmtools.NewMaitredClient(cc), func(ctx context.Context) context.Context { return ctx }); err != nil {
		return nil, err
	}
	return tg, nil
}

// relayedRPC starts the bench VM through cabind, to call its agent through
// cabind's socket. The VM stays up for the memory measurement.
func relayedRPC(ctx context.Context, e *env) (*rpcTarget, error) {
	if _, err := startThroughDaemon(ctx, e.cc, relayVM); err != nil {
		return nil, err
	}
	call, err := kernelVersionCall(ctx, vmtools.NewMaitredClient(e.cc), func(ctx context.Context) context.Context { return toVM(ctx, relayVM) })
	if err != nil {
		return nil, err
	}
	return &rpcTarget{name: "relayed", call: call}, nil
}

// kernelVersionCall waits for the guest to settle, warms the path up, and
// returns a GetKernelVersion round trip.
func kernelVersionCall(ctx context.Context, c vmtools.MaitredClient, route func(context.Context) context.Context) (func() error, error) {
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
	return call, nil
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
