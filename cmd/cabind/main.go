// Command cabind is cabin's host daemon: it starts and manages QEMU microVMs
// and serves cabin's gRPC APIs on a unix socket. VMs outlive it; a
// restarted cabind re-adopts them. SIGTERM or SIGINT stop the daemon and
// leave the VMs running (stop them with `cabin vm stop` or StopAllVms).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cabinvm/cabin/internal/daemon"
	"github.com/cabinvm/cabin/internal/network"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/version"
)

func main() {
	var (
		cfg       daemon.Config
		logFormat string
		logLevel  slog.Level
		showVer   bool
	)
	flag.StringVar(&cfg.Socket, "socket", statedir.DefaultSocket, "unix socket to serve the API on")
	flag.StringVar(&cfg.SocketGroup, "group", "cabin", "the group that may connect to the socket (none but root without it)")
	flag.StringVar(&cfg.StateDir, "state-dir", statedir.DefaultRoot, "directory for VM state and the guest image cache")
	flag.StringVar(&cfg.AgentBinary, "agent", "", "static cabin-agent binary for the guest image (default: next to cabind, else in PATH)")
	flag.StringVar(&cfg.RuntimeBinary, "runtime", "", "static cabin-runtime binary for the guest image (default: next to cabind, else in PATH)")
	flag.StringVar(&cfg.QEMUBinary, "qemu", "", "QEMU program (default qemu-system-x86_64 in PATH)")
	flag.StringVar(&cfg.Accel, "accel", "auto", "accelerator: auto (KVM if the CPU has vmx/svm, else TCG), kvm or tcg")
	flag.StringVar(&cfg.Net, "net", network.ModeAuto, "network of VMs that ask for none: auto (tap where cabind may make taps, else user), tap, user or none")
	flag.StringVar(&cfg.NetPool, "net-pool", network.DefaultPool.String(), "addresses VMs' taps take their /30s from: a CIDR (such as 100.115.0.0/16) or FIRST-LAST")
	flag.IntVar(&cfg.DefaultMemoryMiB, "memory", daemon.DefaultMemoryMiB, "guest RAM in MiB for VMs that do not ask for an amount")
	flag.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	flag.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	flag.BoolVar(&showVer, "version", false, "print the version and exit")
	flag.Parse()
	if showVer {
		fmt.Println("cabind", version.Version)
		return
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cabind: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	opts := &slog.HandlerOptions{Level: logLevel}
	switch logFormat {
	case "text":
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		fmt.Fprintf(os.Stderr, "cabind: unknown log format %q\n", logFormat)
		os.Exit(2)
	}
	if cfg.AgentBinary == "" {
		cfg.AgentBinary = findBinary("cabin-agent")
	}
	if cfg.RuntimeBinary == "" {
		cfg.RuntimeBinary = findBinary("cabin-runtime")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		cfg.Log.Error("cabind failed", "err", err)
		os.Exit(1)
	}
}

// findBinary looks for the guest program name (cabin-agent,
// cabin-runtime) beside this executable, where make build and an install
// put it, then in PATH. When neither has it, the name is returned as it
// is, and the image build says it is not found when a VM first needs it.
func findBinary(name string) string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}
