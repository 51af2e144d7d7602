// Command cabind is cabin's host daemon: it starts and manages QEMU microVMs
// and serves cabin's gRPC APIs on a unix socket. VMs outlive it; a
// restarted cabind re-adopts them. SIGTERM or SIGINT stop the daemon and
// leave the VMs running (stop them with `cabin vm stop` or StopAllVms).
//
// Its settings come from flags and from a TOML file whose keys are the
// flags' names (/etc/cabin/cabind.toml unless --config names another);
// a flag on the command line wins over the file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/internal/daemon"
	"github.com/cabinvm/cabin/internal/daemonconf"
	"github.com/cabinvm/cabin/internal/guestimage"
	"github.com/cabinvm/cabin/internal/ksm"
	"github.com/cabinvm/cabin/internal/network"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, daemon.Run))
}

// usageError is a mistake on the command line or in the config file:
// exit 2, as for other usage errors.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// run is main without the process: tests give it their own arguments,
// streams and daemon.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, serve func(context.Context, daemon.Config) error) int {
	cmd := newCmd(stdout, serve)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "cabind:", err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

func newCmd(stdout io.Writer, serve func(context.Context, daemon.Config) error) *cobra.Command {
	var (
		cfg       daemon.Config
		config    string
		logFormat string
		logLevel  slog.Level
		ksmOn     bool
	)
	cmd := &cobra.Command{
		Use:   "cabind [flags]",
		Short: "cabin's host daemon: runs microVMs and serves cabin's APIs",
		Long: "cabind starts and manages QEMU microVMs and serves cabin's APIs (concierge,\n" +
			"cabin.v1) on a unix socket. VMs outlive it; a restarted cabind adopts them.\n\n" +
			"Settings come from flags and from a TOML file whose keys are the flags' long\n" +
			"names (" + daemonconf.DefaultPath + " unless --config names another); a flag on\n" +
			"the command line wins over the file.",
		Example: "  cabind --net user --memory 1024\n" +
			"  printf 'net = \"tap\"\\nnet-pool = \"100.115.0.0/16\"\\n' > /etc/cabin/cabind.toml; cabind",
		Version: version.Version,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.NoArgs(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		},
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := daemonconf.Apply(cmd.Flags(), config, cmd.Flags().Changed("config")); err != nil {
				return usageError{err}
			}
			log, err := newLogger(logFormat, logLevel)
			if err != nil {
				return usageError{err}
			}
			cfg.Log = log
			if ksmOn {
				// The operator asked: KSM is a host setting cabind never
				// changes otherwise (docs/decisions.md §29).
				wasOn, err := ksm.Enable(ksm.Dir)
				if err != nil {
					return err
				}
				log.Info("ksm: same-page merging on", "already", wasOn)
			}
			if cfg.AgentBinary == "" {
				cfg.AgentBinary = findBinary("cabin-agent")
			}
			if cfg.RuntimeBinary == "" {
				cfg.RuntimeBinary = findBinary("cabin-runtime")
			}
			// Under systemd (Type=notify) the unit is started once the
			// socket serves, and stopping is announced.
			cfg.Ready = func() { sdnotify.SdNotify(false, sdnotify.SdNotifyReady) }
			defer sdnotify.SdNotify(false, sdnotify.SdNotifyStopping)
			return serve(cmd.Context(), cfg)
		},
	}
	cmd.SetVersionTemplate("cabind {{.Version}}\n")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	f := cmd.Flags()
	f.StringVar(&config, "config", daemonconf.DefaultPath, "TOML file of settings, keyed by these flags' names (a missing default file is no error; \"\" reads none)")
	f.StringVar(&cfg.Socket, "socket", statedir.DefaultSocket, "unix socket to serve the API on")
	f.StringVar(&cfg.SocketGroup, "group", "cabin", "the group that may connect to the socket (none but root without it)")
	f.StringVar(&cfg.StateDir, "state-dir", statedir.DefaultRoot, "directory for VM state and the guest image cache")
	f.StringVar(&cfg.AgentBinary, "agent", "", "static cabin-agent binary for the guest image (default: next to cabind, else in PATH)")
	f.StringVar(&cfg.RuntimeBinary, "runtime", "", "static cabin-runtime binary for the guest image (default: next to cabind, else in PATH)")
	f.StringVar(&cfg.Kernel, "kernel", guestimage.KernelAuto, "guest kernel: auto (cabin's minimal kernel where \"make kernel\" built it, else Debian's), generic (Debian's linux-image-amd64), minimal, or the absolute path of an uncompressed PVH vmlinux with everything built in")
	f.StringVar(&cfg.QEMUBinary, "qemu", "", "QEMU program (default qemu-system-x86_64 in PATH)")
	f.StringVar(&cfg.Accel, "accel", "auto", "accelerator: auto (KVM if the CPU has vmx/svm, else TCG), kvm or tcg")
	f.StringVar(&cfg.Net, "net", network.ModeAuto, "network of VMs that ask for none: auto (tap where cabind may make taps, else user), tap, user or none")
	f.StringVar(&cfg.NetPool, "net-pool", network.DefaultPool.String(), "addresses VMs' taps take their /30s from: a CIDR (such as 100.115.0.0/16) or FIRST-LAST")
	f.IntVar(&cfg.DefaultMemoryMiB, "memory", daemon.DefaultMemoryMiB, "guest RAM in MiB for VMs that do not ask for an amount")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", "serve Prometheus metrics over HTTP on this host:port (off when empty)")
	f.BoolVar(&ksmOn, "ksm", false, "turn on the host kernel's same-page merging (/sys/kernel/mm/ksm/run) at start: identical idle VMs share pages, for ksmd's CPU; never turned off by cabind")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	f.SortFlags = false
	return cmd
}

func newLogger(format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
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
