// Command cabin-bench measures cabin against the baselines its issues name,
// in one run, and prints a table of the results and their ratios:
//
//   - boot: StartVm → VmStartedSignal through cabind, against the same QEMU
//     command launched directly until the agent's first byte;
//   - RPC: Maitred.GetKernelVersion through cabind's relay and directly over
//     the channel, against a raw 64-byte echo on the same virtio-serial port;
//   - memory: the agent's RSS after boot, and cabind's RSS with one VM;
//   - net: TCP throughput host → guest and guest → host over a VM's tap,
//     against a veth pair between two network namespaces, and through a
//     port forward, against the tap; connection set-up through a forward,
//     against a direct connection.
//
// The network measurements run a second cabind, with --net tap, in a
// network namespace of their own, and the veth pair between two more:
// they change nothing of the host's network.
//
// It needs root, QEMU and the binaries `make build` puts beside it
// (cabin-netperf among them: the static TCP measuring program), and
// starts its own cabind on a private state dir and socket.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

type options struct {
	bootRuns int
	rpcCalls int
	keep     bool
	bin      string
	only     string
	qemu     string
	// The network measurements: each transfer's length, how many of
	// each, and connections each way.
	transfer  time.Duration
	netRounds int
	conns     int
}

func main() {
	var o options
	flag.IntVar(&o.bootRuns, "boots", 8, "boots each way for the boot measurement")
	flag.IntVar(&o.rpcCalls, "calls", 2000, "round trips per RPC measurement")
	flag.BoolVar(&o.keep, "keep", false, "keep the state dir for inspection")
	flag.StringVar(&o.bin, "bin", "", "directory of cabind and cabin-agent (default: beside this program)")
	flag.StringVar(&o.qemu, "qemu", "", "QEMU program for both cabind and the direct launches (default qemu-system-x86_64)")
	flag.DurationVar(&o.transfer, "transfer", 2*time.Second, "length of each TCP transfer of the network measurement")
	flag.IntVar(&o.netRounds, "transfers", 5, "TCP transfers each way on each path")
	flag.IntVar(&o.conns, "conns", 200, "connections each way for the connection set-up measurement")
	flag.StringVar(&o.only, "only", "", "run only this part: boot, rpc, net or disk (memory needs rpc's VM and runs with it)")
	flag.Parse()
	if o.bin == "" {
		exe, err := os.Executable()
		if err != nil {
			fatal(err)
		}
		o.bin = filepath.Dir(exe)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, o, log); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "cabin-bench:", err)
	os.Exit(1)
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	switch o.only {
	case "", "boot", "rpc", "net", "disk":
	default:
		return fmt.Errorf("-only %q: want boot, rpc, net or disk", o.only)
	}
	var t table
	defer t.print(os.Stdout)
	if o.only == "disk" {
		// The disk rows measure cabind's image code in-process: no daemon.
		return benchDisk(ctx, &t)
	}
	env, err := setup(ctx, o, log)
	if err != nil {
		return err
	}
	defer env.close()
	if o.only == "" || o.only == "boot" {
		progress("boot: %d boots through cabind and %d direct, interleaved", o.bootRuns, o.bootRuns)
		if err := benchBoot(ctx, env, o.bootRuns, &t); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
	}
	if o.only == "" || o.only == "rpc" {
		progress("rpc: %d round trips each: raw echo, direct, relayed and local, taking turns in %d rounds", o.rpcCalls, rounds)
		if err := benchRPC(ctx, env, o.rpcCalls, &t); err != nil {
			return fmt.Errorf("rpc: %w", err)
		}
		progress("memory")
		if err := benchMemory(ctx, env, &t); err != nil {
			return fmt.Errorf("memory: %w", err)
		}
	}
	if o.only == "" || o.only == "net" {
		progress("net: a cabind with --net tap and a veth pair, in network namespaces of their own")
		if err := benchNet(ctx, env, o, &t); err != nil {
			return fmt.Errorf("net: %w", err)
		}
	}
	if o.only == "" {
		progress("disk: export and import of a sparse image against qemu-img convert")
		if err := benchDisk(ctx, &t); err != nil {
			return fmt.Errorf("disk: %w", err)
		}
	}
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cabin-bench: "+format+"\n", args...)
}
