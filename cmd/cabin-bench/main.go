// Command cabin-bench measures cabin against the baselines its issues name,
// in one run, and prints a table of the results and their ratios:
//
//   - boot: StartVm → VmStartedSignal through cabind, against the same QEMU
//     command launched directly until the agent's first byte;
//   - boot phases: QEMU start to the console, the kernel's phases, the
//     agent's own marks to VmReady, from the host's, the kernel's and the
//     agent's timestamps on one clock;
//   - RPC: Maitred.GetKernelVersion through cabind's relay and directly over
//     the channel, against a raw 64-byte echo on the same virtio-serial port;
//   - memory: the agent's RSS after boot, and cabind's RSS with one VM;
//   - balloon: an idle 256 MiB VM's host memory (QEMU PSS + cabind's share)
//     at VmStarted, after 10 s idle and after ReclaimVmMemory, against the
//     guest's own MemTotal − MemAvailable;
//   - suspend: a suspend→resume round trip against GetVmInfo's; StopVm of
//     a cooperative guest against the guest's own poweroff;
//   - hotplug: boot to the agent on q35 with hot-plug against microvm;
//     NIC attach and detach round trips;
//   - share: a 9p read of 256 MiB in the guest against virtio-blk;
//   - net: TCP throughput host → guest and guest → host over a VM's tap,
//     against a veth pair between two network namespaces, and through a
//     port forward, against the tap; connection set-up through a forward,
//     against a direct connection;
//   - katastats: StatsContainer and GetMetrics through the relay against a
//     relayed GetKernelVersion; the agent's RSS after them;
//   - runimage: `cabin run IMAGE true` on a warm VM against the raw echo;
//     an image's files over the 9p share against a virtio-blk ext4 image;
//     QEMU's PSS with 10 containers of one image against 1, the agent's RSS;
//   - copyfile: Kata CopyFile of 16 MiB through the relay against the raw
//     channel's echo throughput;
//   - containers: exec of true into a running container against the raw
//     echo round trip; a container's stdout through ReadStdout,
//     Containers.Logs and `cabin logs` against raw virtio-serial throughput;
//   - cpdir: cabin cp of a directory tree into a container and out, against
//     raw virtio-serial; imagesmount: the images share's mount and unmount
//     in the guest, which a cabin run no longer pays;
//   - diskstream: streamed disk export against reading its data; cancel of
//     an export whose receiver is blocked;
//   - density: -count idle 256 MiB VMs through cabind (each exec'd into
//     once) against a bare guest: idle CPU and PSS per VM, cabind's RSS,
//     the slowest exec and ListVms, the last boot against the first;
//   - disk: export and import of a sparse image against qemu-img convert;
//   - oci: import (verify, store, safe unpack) of a generated 100 MiB
//     4-layer image against tar -xzf of its layers; the ext4 block image;
//     erofs where mkfs.erofs is installed.
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
	"strings"
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
	// kernel is every cabind's --kernel.
	kernel string
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
	flag.StringVar(&o.kernel, "kernel", "auto", "cabind's --kernel: auto, generic, minimal or a vmlinux path (bootphases: -kernel generic -phases-kernel /var/cache/cabin/kernel/current/vmlinux compares the two)")
	flag.StringVar(&o.qemu, "qemu", "", "QEMU program for both cabind and the direct launches (default qemu-system-x86_64)")
	flag.DurationVar(&o.transfer, "transfer", 2*time.Second, "length of each TCP transfer of the network measurement")
	flag.IntVar(&o.netRounds, "transfers", 5, "TCP transfers each way on each path")
	flag.IntVar(&o.conns, "conns", 200, "connections each way for the connection set-up measurement")
	flag.StringVar(&o.only, "only", "", "run only this part: "+partNames()+" (memory runs with rpc)")
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

// part is one measurement of the bench. Parts without a daemon measure
// cabind's code in-process.
type part struct {
	name     string
	about    string
	noDaemon bool
	run      func(ctx context.Context, e *env, o options, t *table) error
}

// parts are the bench's measurements, in the order a full run takes them.
var parts = []part{
	{name: "boot", about: "boots through cabind and direct, interleaved",
		run: func(ctx context.Context, e *env, o options, t *table) error { return benchBoot(ctx, e, o.bootRuns, t) }},
	{name: "bootphases", about: "boots split into phases from the host's, the kernel's and the agent's timestamps; -phases-kernel/-phases-args boot a variant in turn",
		run: func(ctx context.Context, e *env, o options, t *table) error {
			return benchBootPhases(ctx, e, o.bootRuns, t)
		}},
	{name: "rpc", about: "round trips each: raw echo, direct, relayed and local, taking turns; then memory",
		run: func(ctx context.Context, e *env, o options, t *table) error {
			if err := benchRPC(ctx, e, o.rpcCalls, t); err != nil {
				return err
			}
			return benchMemory(ctx, e, t)
		}},
	{name: "balloon", about: "an idle 256 MiB VM's cost to the host at VmStarted, after 10 s idle and after ReclaimVmMemory",
		run: func(ctx context.Context, e *env, _ options, t *table) error { return benchBalloon(ctx, e, t) }},
	{name: "suspend", about: "suspend→resume round trips against GetVmInfo; stops against the guest's own poweroff",
		run: func(ctx context.Context, e *env, _ options, t *table) error { return benchSuspend(ctx, e, t) }},
	{name: "hotplug", about: "boots with hot-plug (q35) against microvm, taking turns; a NIC plugged in and out",
		run: benchHotplug},
	{name: "share", about: "9p read of 256 MiB in the guest against virtio-blk",
		run: func(ctx context.Context, e *env, _ options, t *table) error { return benchShare(ctx, e, t) }},
	{name: "net", about: "a cabind with --net tap and a veth pair, in network namespaces of their own",
		run: benchNet},
	{name: "katastats", about: "StatsContainer and GetMetrics through the relay against GetKernelVersion, taking turns",
		run: func(ctx context.Context, e *env, o options, t *table) error {
			return benchKataStats(ctx, e, o.rpcCalls/4, t)
		}},
	{name: "runimage", about: "cabin run IMAGE true against the raw echo; image over 9p against virtio-blk; memory with 10 containers",
		run: benchRunImage},
	{name: "copyfile", about: "CopyFile of 16 MiB in 1 MiB and 128 KiB chunks against the raw channel echo",
		run: func(ctx context.Context, e *env, _ options, t *table) error { return benchCopyFile(ctx, e, t) }},
	{name: "containers", about: "exec of true into a running container against the raw echo; stdout through ReadStdout and cabin logs against raw virtio-serial",
		run: benchContainers},
	{name: "cpdir", about: "cabin cp of a directory tree into a container and out, against raw virtio-serial",
		run: benchCpDir},
	{name: "imagesmount", about: "mount and unmount of the images share in the guest, against the same loop without",
		run: benchImagesMount},
	{name: "diskstream", about: "streamed disk export against reading its data; cancel of an export whose receiver is blocked", noDaemon: true,
		run: func(ctx context.Context, _ *env, _ options, t *table) error { return benchDiskStream(ctx, t) }},
	{name: "firstrun", about: "the first cabin run on fresh VMs against the second; QEMU PSS at VmStarted",
		run: benchFirstRun},
	{name: "density", about: "idle VMs packed onto the host (-count), against a bare guest",
		run: func(ctx context.Context, e *env, _ options, t *table) error { return benchDensity(ctx, e, t) }},
	{name: "disk", about: "export and import of a sparse image against qemu-img convert", noDaemon: true,
		run: func(ctx context.Context, _ *env, _ options, t *table) error { return benchDisk(ctx, t) }},
	{name: "oci", about: "import of a 100 MiB 4-layer image against tar -xzf of its layers; ext4 and erofs images of it", noDaemon: true,
		run: func(ctx context.Context, _ *env, _ options, t *table) error { return benchOCIImage(ctx, t) }},
}

func partNames() string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = p.name
	}
	return strings.Join(names, ", ")
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	var todo []part
	for _, p := range parts {
		if o.only == "" || o.only == p.name {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return fmt.Errorf("-only %q: want one of %s", o.only, partNames())
	}
	var t table
	defer t.print(os.Stdout)
	var e *env
	for _, p := range todo {
		if !p.noDaemon && e == nil {
			var err error
			if e, err = setup(ctx, o, log); err != nil {
				return err
			}
			defer e.close()
		}
		progress("%s: %s", p.name, p.about)
		if err := p.run(ctx, e, o, &t); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cabin-bench: "+format+"\n", args...)
}
