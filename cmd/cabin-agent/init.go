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
	if err := boot(log, level, start); err != nil {
		log.Error("agent failed; powering off", "err", err)
	}
	if err := guestinit.PowerOff(log); err != nil {
		log.Error("cannot power off", "err", err)
	}
	os.Exit(1)
}

// boot sets the guest up and serves until Shutdown (nil) or a fatal error.
func boot(log *slog.Logger, level *slog.LevelVar, start time.Time) error {
	if err := guestinit.Setup(log); err != nil {
		// Not fatal: what still works may be enough to reach the host and
		// be asked what went wrong.
		log.Error("setup", "err", err)
	}
	params := readParams(log)
	if params.Debug {
		level.Set(slog.LevelDebug)
	}
	if err := guestinit.SetHostname(params.Hostname); err != nil {
		log.Warn("hostname", "err", err)
	}
	// Reap-all from the start: every orphan in the VM comes to PID 1.
	// It keeps running through the power-off, which reaps what it kills.
	r := reaper.New(true, log)
	go r.Run(context.Background())

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if err := guestinit.LoadModules(ctx, log, bootcfg.ModulesDir, bootcfg.BootModules); err != nil {
		log.Warn("boot modules", "err", err)
	}
	port, err := openPort(ctx, bootcfg.AgentPort, log)
	if err != nil {
		return err
	}
	rpc, err := openPort(ctx, bootcfg.RPCPort, log)
	if err != nil {
		return err
	}
	log.Debug("ports open", "since_start", time.Since(start))
	if params.Mode == bootcfg.ModeEcho {
		go rpc.Echo(ctx)
		return port.Echo(ctx)
	}

	// busybox's poweroff and reboot signal PID 1 (SIGUSR2, SIGTERM); a VM
	// has nothing to reboot into, so both power off.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR2, syscall.SIGINT)
	go func() {
		log.Info("power-off signal", "signal", <-sigs)
		stop()
	}()

	late := guestinit.NewBackground()
	a := agent.New(agent.Config{
		Log:      log,
		Reaper:   r,
		PowerOff: stop,
		// Late modules wait until the host has heard VmReady: boot time
		// is measured to it, and the CPU is slow under TCG. Then they load
		// in the background, so as not to slow the host's bring-up calls,
		// until a call (Mount) needs them.
		OnReady: func() {
			// Logged after VmReady: console output is slow under TCG and
			// the boot is timed to VmReady.
			log.Info("cabin-agent ready", "version", version.Version, "hostname", params.Hostname, "since_start", time.Since(start).Round(time.Millisecond))
			late.Start(func() error {
				t := time.Now()
				// A module that fails is logged, not passed on: a mount that
				// needed it fails on its own, naming the filesystem.
				if err := guestinit.LoadModules(ctx, log, bootcfg.ModulesDir, bootcfg.LateModules); err != nil {
					log.Warn("late modules", "err", err)
				}
				log.Info("late modules loaded", "took", time.Since(t).Round(time.Millisecond))
				return nil
			})
		},
		WaitModules: late.Wait,
	})
	defer a.Close()
	return a.ServePorts(ctx, port, rpc)
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
	dev, err := guestinit.WaitPort(ctx, channel.SysfsPorts, name, portTimeout)
	if err != nil {
		return nil, err
	}
	return channel.OpenPort(dev, log)
}
