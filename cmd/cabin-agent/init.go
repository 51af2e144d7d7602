package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/guest/agent"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
	"github.com/cabinvm/cabin/internal/guestinit"
	"github.com/cabinvm/cabin/internal/reaper"
	"github.com/cabinvm/cabin/internal/version"
)

// portTimeout bounds the wait for the host's port after the boot modules
// load; under TCG it shows up well within a second.
const portTimeout = 30 * time.Second

// initMain is the agent as PID 1. It never returns: the kernel panics when
// init exits, so every way out powers the VM off.
func initMain() {
	start := time.Now()
	level := new(slog.LevelVar)
	// The kernel gives init /dev/console as stdio.
	log := slog.New(handler(os.Stderr, level, false))
	// First of all: until then a signal sent to PID 1 ends it, and the
	// kernel with it.
	ctx := handleSignals(context.Background(), log)
	if err := boot(ctx, log, level, start); err != nil && ctx.Err() == nil {
		log.Error("agent failed; powering off", "err", err)
	}
	if err := guestinit.PowerOff(log); err != nil {
		log.Error("cannot power off", "err", err)
	}
	os.Exit(1)
}

// boot sets the guest up and serves until Shutdown, ctx's end (a power-off
// signal) or a fatal error.
func boot(ctx context.Context, log *slog.Logger, level *slog.LevelVar, start time.Time) error {
	// Before anything is mounted: it moves the initramfs's files.
	if err := guestinit.LeaveRootfs(log); err != nil {
		// Not fatal: containers fall back to a chroot jail.
		log.Warn("root stays the rootfs", "err", err)
	}
	// Boot marks go to the kernel log, for the bench's boot phases
	// (cabin-bench bootphases): main is start, after the Go runtime and
	// package init.
	marks := &guestinit.BootMarks{}
	marks.Mark(bootcfg.MarkMain, start)
	if err := guestinit.Setup(log); err != nil {
		// Not fatal: what still works may be enough to reach the host and
		// be asked what went wrong.
		log.Error("setup", "err", err)
	}
	params := readParams(log)
	if params.Debug {
		level.Set(slog.LevelDebug)
	}
	// Before anything is started: what the agent starts inherits it.
	if err := guestinit.SetOOMScoreAdj("/proc", guestinit.AgentOOMScoreAdj); err != nil {
		log.Warn("oom score", "err", err)
	}
	cgroups := setupCgroups(log)
	if err := guestinit.SetHostname(params.Hostname); err != nil {
		log.Warn("hostname", "err", err)
	}
	// Reap-all from the start: every orphan in the VM comes to PID 1.
	// It keeps running through the power-off, which reaps what it kills.
	r := reaper.New(true, log)
	go r.Run(context.Background())
	marks.Mark(bootcfg.MarkSetup, time.Now())

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := guestinit.LoadModules(ctx, log, bootcfg.ModulesDir, bootcfg.BootModules); err != nil {
		log.Warn("boot modules", "err", err)
	}
	marks.Mark(bootcfg.MarkModules, time.Now())
	port, err := openPort(ctx, bootcfg.AgentPort, log)
	if err != nil {
		return err
	}
	rpc, err := openPort(ctx, bootcfg.RPCPort, log)
	if err != nil {
		return err
	}
	log.Debug("ports open", "since_start", time.Since(start))
	marks.Mark(bootcfg.MarkPorts, time.Now())
	if err := marks.Flush(guestinit.Kmsg); err != nil {
		log.Debug("boot marks", "err", err)
	}
	if params.Mode == bootcfg.ModeEcho {
		return echo(ctx, port, rpc)
	}

	late := guestinit.NewBackground()
	share := guestinit.NewShare(late)
	a := agent.New(agent.Config{
		Log:      log,
		Reaper:   r,
		PowerOff: stop,
		// Late modules wait until the host has heard VmReady: boot time
		// is measured to it, and the CPU is slow under TCG. Then they load
		// in the background, so as not to slow the host's bring-up calls,
		// until a call (Mount) needs them.
		OnReady: func() {
			marks.Mark(bootcfg.MarkReady, time.Now())
			if err := marks.Flush(guestinit.Kmsg); err != nil {
				log.Debug("boot marks", "err", err)
			}
			// Logged after VmReady: console output is slow under TCG and
			// the boot is timed to VmReady.
			log.Info("cabin-agent ready", "version", version.Version, "hostname", params.Hostname, "since_start", time.Since(start).Round(time.Millisecond))
			late.Start(func() error {
				lateWork(ctx, log, share)
				return nil
			})
		},
		WaitModules: late.Wait,
		WaitShare:   share.Wait,
		// Every process in the VM gets SIGTERM while the server still
		// runs, so that an Exec reports its process's end; the power-off
		// after finds them gone.
		Terminate: func(ctx context.Context) { guestinit.KillAll(ctx, log, guestinit.KillGrace) },
		Cgroups:   cgroups,
	})
	defer a.Close()
	return a.ServePorts(ctx, port, rpc)
}

// setupCgroups lays the guest's cgroups out (internal/guest/cgroup), sized
// from what the VM has while nothing but the agent runs. It does what it
// can: without a budget the parents go unlimited, without the tree
// containers and exec sessions run as they would without the agent's
// care; both are logged.
func setupCgroups(log *slog.Logger) *cgroup.Tree {
	b, err := cgroup.ReadBudget("/proc")
	if err != nil {
		log.Warn("cgroups: the VM's size is unknown; containers and exec sessions go unlimited", "err", err)
	}
	plan := cgroup.PlanFor(b)
	t, err := cgroup.Setup(cgroup.Mount, plan)
	if err != nil {
		log.Warn("cgroups", "err", err)
	}
	log.Debug("cgroups", "memory", b.Total, "available", b.Memory, "tasks", b.Tasks,
		"containers", plan.Containers, "exec", plan.Exec)
	return t
}

// powerOffSignals power the VM off. busybox's poweroff and reboot signal
// PID 1 (SIGUSR2, SIGTERM), and its init takes SIGINT for ctrl-alt-del; a
// VM has nothing to reboot into, so all of them power off.
var powerOffSignals = []os.Signal{syscall.SIGTERM, syscall.SIGUSR2, syscall.SIGINT}

// survivedSignals would end PID 1 if left to Go: sent by another process,
// SIGHUP makes a Go program exit, and SIGQUIT and the signals faults raise
// make it dump its goroutines and exit. For init the kernel drops signals
// it has no handler for, but a Go program has handlers for all of them. So
// PID 1 catches these and logs them. It does not ignore them: an ignored
// signal stays ignored in every process it starts. Faults the agent itself
// causes are not signals sent to it and still crash it.
var survivedSignals = []os.Signal{
	syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGABRT, syscall.SIGILL, syscall.SIGTRAP,
	syscall.SIGBUS, syscall.SIGFPE, syscall.SIGSEGV, syscall.SIGSTKFLT, syscall.SIGSYS,
}

// handleSignals takes over the signals that would end PID 1 and returns a
// context that the first power-off signal ends. It must run before
// anything can take time: the boot waits for the host's port.
func handleSignals(ctx context.Context, log *slog.Logger) context.Context {
	ctx, powerOff := context.WithCancel(ctx)
	// Channels apart, so that a burst of survived signals, which a full
	// channel would drop, cannot crowd a power-off out.
	off := make(chan os.Signal, 1)
	signal.Notify(off, powerOffSignals...)
	survived := make(chan os.Signal, len(survivedSignals))
	signal.Notify(survived, survivedSignals...)
	go func() {
		sig := <-off
		log.Info("power-off signal", "signal", sig)
		powerOff()
		for sig := range off {
			log.Info("power-off signal; already powering off", "signal", sig)
		}
	}()
	go func() {
		for sig := range survived {
			log.Warn("signal ignored: PID 1 does not end on it", "signal", sig)
		}
	}()
	return ctx
}

// echo echoes both ports until the agent port fails or ctx ends. A port's
// Echo notices ctx only between hosts, so ctx is watched here too.
func echo(ctx context.Context, port, rpc *channel.Port) error {
	go rpc.Echo(ctx)
	done := make(chan error, 1)
	go func() { done <- port.Echo(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// readParams reads the host's parameters from the kernel command line.
// Bad ones are logged and ignored: an agent that serves can be asked what
// went wrong, one that powers off cannot.
func readParams(log *slog.Logger) bootcfg.Params {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.Warn("kernel command line", "err", err)
		return bootcfg.Params{}
	}
	p, err := bootcfg.Parse(string(b))
	if err != nil {
		log.Warn("kernel command line", "err", err)
		return bootcfg.Params{}
	}
	return p
}

// openPort waits for the virtio-serial port called name and opens it.
func openPort(ctx context.Context, name string, log *slog.Logger) (*channel.Port, error) {
	dev, err := guestinit.WaitPort(ctx, guestinit.SysfsPorts, name, portTimeout)
	if err != nil {
		return nil, err
	}
	return channel.OpenPort(dev, log)
}

// lateWork is what the agent does once the host has heard VmReady: it
// mounts the guest image's share (the modules 9p needs first), which
// holds what boot does not need (bootcfg.SystemRoot), and loads the late
// modules from it. A share that cannot be mounted is logged and told to
// whoever waits for it; the agent goes on serving.
func lateWork(ctx context.Context, log *slog.Logger, share *guestinit.Share) {
	t := time.Now()
	// A module that fails is logged, not passed on: the mount, or a
	// call's mount that needed it, fails on its own, naming what.
	if err := guestinit.LoadModules(ctx, log, bootcfg.ModulesDir, bootcfg.ShareModules); err != nil {
		log.Warn("share modules", "err", err)
	}
	err := guestinit.MountShare(bootcfg.RootfsTag, bootcfg.RootfsMount)
	share.Set(err)
	if err != nil {
		log.Error("no guest image share: containers, disks' tools, iptables, time zones and late modules are unavailable", "err", err)
		return
	}
	log.Info("guest image share mounted", "at", bootcfg.RootfsMount, "took", time.Since(t).Round(time.Millisecond))
	t = time.Now()
	if err := guestinit.LoadModules(ctx, log, bootcfg.SystemModulesDir, bootcfg.LateModules); err != nil {
		log.Warn("late modules", "err", err)
	}
	log.Info("late modules loaded", "took", time.Since(t).Round(time.Millisecond))
}
