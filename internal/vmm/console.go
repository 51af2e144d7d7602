package vmm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Console log limits: six files of 5 MiB hold the 30 MiB GetVmLogs returns.
const (
	consoleFileBytes = 5 << 20
	maxLogBytes      = 30 << 20
)

func consoleFiles(dir statedir.VMDir) consolelog.Files {
	return consolelog.Files{Live: dir.ConsoleLog(), Rotated: dir.RotatedLog, Keep: statedir.MaxRotatedLogs}
}

// copyConsole copies the guest's serial console into its log until ctx
// ends, reconnecting to QEMU's console socket if the connection drops.
// While nobody is connected QEMU drops console output, so this starts
// before the guest's vCPUs do.
func copyConsole(ctx context.Context, dir statedir.VMDir, connected chan<- struct{}, log *slog.Logger) {
	w, err := consolelog.Open(consoleFiles(dir), consoleFileBytes)
	if err != nil {
		log.Error("console log", "err", err)
		close(connected)
		return
	}
	defer w.Close()
	// Launch waits for the first attempt only: without a socket there is
	// nothing to wait for. Without any attempt (ctx ended first), it must
	// not wait for ever either.
	signalled := false
	signal := func() {
		if !signalled {
			close(connected)
			signalled = true
		}
	}
	defer signal()
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
		if _, err := io.Copy(w, conn); err != nil && ctx.Err() == nil && !errors.Is(err, syscall.ECONNRESET) {
			// The log could not be written (a failed rotation); the next
			// connection tries again.
			log.Warn("console log", "err", err)
		}
		stop()
		conn.Close()
	}
}
