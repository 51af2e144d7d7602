package consolelog

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// FileBytes is the size at which a VM's live console log is rotated: six
// files of 5 MiB hold the 30 MiB upstream's GetVmLogs returns.
const FileBytes = 5 << 20

// FilesOf names the console log of the VM whose directory is dir.
func FilesOf(dir statedir.VMDir) Files {
	return Files{Live: dir.ConsoleLog(), Rotated: dir.RotatedLog, Keep: statedir.MaxRotatedLogs}
}

// Resource is a VM's console as a per-VM resource: each VM gets a serial
// console on a socket in its directory, and while cabind runs, what the
// guest writes there is copied into the VM's log. QEMU drops console
// output while nobody is connected, so the copy starts before the guest's
// vCPUs do (resource.Starter).
type Resource struct{}

var _ resource.Kind = Resource{}

// Name is "console".
func (Resource) Name() string { return "console" }

// Prepare gives the VM its console socket.
func (Resource) Prepare(_ context.Context, vm resource.VM, cfg *hypervisor.Config) (resource.Hold, error) {
	cfg.Console = vm.Dir.ConsoleSocket()
	return &hold{vm: vm}, nil
}

// Adopt takes back the console of a running VM; it keeps no state.
func (Resource) Adopt(_ context.Context, vm resource.VM, _ json.RawMessage) (resource.Hold, error) {
	return &hold{vm: vm}, nil
}

// hold is one VM's console: the goroutine copying it once started.
type hold struct {
	vm resource.VM

	mu     sync.Mutex
	cancel context.CancelFunc // nil until started
	done   chan struct{}      // closed when the copy has returned
	ended  bool
}

func (h *hold) State() json.RawMessage { return nil }

// Start begins copying the console and returns once the first attempt to
// connect has been made (or ctx ended): then QEMU has a reader, or there
// is no socket to wait for.
func (h *hold) Start(ctx context.Context, _ hypervisor.VM) error {
	h.mu.Lock()
	if h.ended || h.cancel != nil {
		h.mu.Unlock()
		return nil
	}
	cctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	connected := make(chan struct{})
	go func() {
		defer close(h.done)
		copyConsole(cctx, h.vm.Dir, connected, h.vm.Log)
	}()
	h.mu.Unlock()
	select {
	case <-connected:
	case <-ctx.Done():
	}
	return nil
}

// Detach stops the copy; the VM goes on without a reader until the next
// cabind adopts it.
func (h *hold) Detach() { h.stop() }

// Release stops the copy and removes the console's socket. The log stays.
func (h *hold) Release(context.Context) error {
	h.stop()
	if err := os.Remove(h.vm.Dir.ConsoleSocket()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (h *hold) stop() {
	h.mu.Lock()
	h.ended = true
	cancel, done := h.cancel, h.done
	h.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// copyConsole copies the guest's serial console into its log until ctx
// ends, reconnecting to QEMU's console socket if the connection drops.
// connected is closed after the first attempt to connect, or when ctx ends
// before any.
func copyConsole(ctx context.Context, dir statedir.VMDir, connected chan<- struct{}, log *slog.Logger) {
	signalled := false
	signal := func() {
		if !signalled {
			close(connected)
			signalled = true
		}
	}
	defer signal()
	w, err := Open(FilesOf(dir), FileBytes)
	if err != nil {
		log.Error("console log", "err", err)
		return
	}
	defer w.Close()
	out := &sink{w: w, log: log}
	for ctx.Err() == nil {
		conn, err := net.Dial("unix", dir.ConsoleSocket())
		signal()
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		// ECONNRESET is QEMU going away: a connection made as it exits
		// waits in its socket's backlog, and is reset when it closes it.
		if _, err := io.Copy(out, conn); err != nil && ctx.Err() == nil && !errors.Is(err, syscall.ECONNRESET) {
			log.Warn("console", "err", err)
		}
		stop()
		conn.Close()
	}
}

// sink writes the console into the log and never fails: while the log
// cannot be written (a full disk, an I/O error, a rotation that fails) the
// console is still read, so that the guest never waits on it, and its
// output is dropped. That costs one warning when it begins and one note
// when a write succeeds again, not a warning per write.
type sink struct {
	w   io.Writer
	log *slog.Logger

	failing bool
	dropped int64 // bytes dropped since failing began
}

func (s *sink) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		if !s.failing {
			s.failing = true
			s.log.Warn("console log cannot be written: dropping console output until it can", "err", err)
		}
		s.dropped += int64(len(p) - n)
		return len(p), nil
	}
	if s.failing {
		s.log.Info("console log written again", "dropped_bytes", s.dropped)
		s.failing, s.dropped = false, 0
	}
	return n, nil
}
