// Command cabin-agent is cabin's guest agent. Booted as PID 1 in a cabin
// VM it sets the guest up and serves the guest APIs over the host's
// virtio-serial port; run as an ordinary process with --listen it serves
// them on a unix socket, for tests and development.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/guest/agent"
	"github.com/cabinvm/cabin/internal/reaper"
	"github.com/cabinvm/cabin/internal/version"
)

// The agent's heap is small and mostly idle; a low GC target keeps its RSS
// within a small VM's budget. The limit is soft (the runtime goes past it
// rather than fail) and sits above what streaming exec output needs: the
// flow-control windows let a few MiB be in flight. At 8 MiB the collector
// ran back to back while exec streamed, some 50 cycles a second, and
// output and input moved at 60% of the speed they do at 12.
const (
	gcPercent   = 50
	memoryLimit = 12 << 20
)

func main() {
	debug.SetGCPercent(gcPercent)
	debug.SetMemoryLimit(memoryLimit)
	if os.Getpid() == 1 {
		initMain() // never returns
	}
	os.Exit(devMain(os.Args[1:]))
}

// devMain runs the agent as an ordinary process serving on a unix socket:
// no mounts, modules or power-off; Shutdown stops the process.
func devMain(args []string) int {
	fs := flag.NewFlagSet("cabin-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "serve on this unix socket instead of the VM's port")
	debugLog := fs.Bool("debug", false, "log at debug level")
	jsonLog := fs.Bool("log-json", false, "log as JSON")
	showVersion := fs.Bool("version", false, "print the version and exit (what cabin version shows of the agent)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("cabin-agent", version.Version)
		return 0
	}
	if *listen == "" {
		fmt.Fprintln(os.Stderr, "cabin-agent: not PID 1; use --listen SOCKET to serve on a unix socket")
		return 2
	}
	log := newLogger(*debugLog, *jsonLog)
	if err := serveSocket(log, *listen); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

func serveSocket(log *slog.Logger, path string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// A child subreaper that reaps every child, as PID 1 does in a VM:
	// the processes cabin-runtime starts for containers become the
	// agent's when the runtime exits, and only then can it wait for them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become a child subreaper: %w", err)
	}
	r := reaper.New(true, log)
	go r.Run(ctx)

	// A socket left by an earlier run would make Listen fail.
	if st, err := os.Lstat(path); err == nil && st.Mode().Type() == os.ModeSocket {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	a := agent.New(agent.Config{Log: log, Reaper: r, PowerOff: stop})
	defer a.Close()
	log.Info("serving", "socket", path)
	err = a.ServeListener(ctx, l)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func newLogger(debugLevel, json bool) *slog.Logger {
	level := new(slog.LevelVar)
	if debugLevel {
		level.Set(slog.LevelDebug)
	}
	return slog.New(handler(os.Stderr, level, json))
}

func handler(w *os.File, level slog.Leveler, json bool) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if json {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}
