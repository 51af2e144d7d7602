package vmm

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/statedir"
)

// TestCopyConsoleQEMUExit: the console is copied into the log; when QEMU
// exits, the connection copyConsole has just made again is reset, which
// is the end of QEMU and nothing to warn of.
func TestCopyConsoleQEMUExit(t *testing.T) {
	dir := statedir.VMDir(t.TempDir())
	l, err := net.Listen("unix", dir.ConsoleSocket())
	if err != nil {
		t.Fatal(err)
	}
	// Read once copyConsole has returned: no lock needed.
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ctx, cancel := context.WithCancel(context.Background())
	connected := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyConsole(ctx, dir, connected, log)
	}()
	<-connected
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("guest says hello\n"))
	c.Close()
	// QEMU exits: copyConsole dials again, and the listening socket
	// closes with that connection in its backlog, never accepted.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(readLog(t, dir), "guest says hello") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	l.Close()
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-done

	if got := readLog(t, dir); got != "guest says hello\n" {
		t.Errorf("console log %q", got)
	}
	if s := logged.String(); s != "" {
		t.Errorf("logged at QEMU's exit:\n%s", s)
	}
}

func readLog(t *testing.T, dir statedir.VMDir) string {
	t.Helper()
	b, err := os.ReadFile(dir.ConsoleLog())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}
