package consolelog

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
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

// The resource gives the VM its console socket, copies the console from
// Start on, and on Release stops copying and removes the socket, keeping
// the log.
func TestResourceLifecycle(t *testing.T) {
	dir := statedir.VMDir(t.TempDir())
	vm := resource.VM{Name: "c", Dir: dir, Log: slog.New(slog.DiscardHandler)}
	var cfg hypervisor.Config
	h, err := Resource{}.Prepare(context.Background(), vm, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Console != dir.ConsoleSocket() {
		t.Fatalf("console %q, want %q", cfg.Console, dir.ConsoleSocket())
	}
	l, err := net.Listen("unix", cfg.Console)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := h.(resource.Starter).Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("boot\n"))
	deadline := time.Now().Add(5 * time.Second)
	for readLog(t, dir) != "boot\n" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The copy has ended: what the guest writes now is not logged.
	c.Write([]byte("after\n"))
	c.Close()
	time.Sleep(100 * time.Millisecond)
	if got := readLog(t, dir); got != "boot\n" {
		t.Errorf("log %q, want what came before the release", got)
	}
	if _, err := os.Stat(dir.ConsoleSocket()); !os.IsNotExist(err) {
		t.Errorf("console socket after release: %v", err)
	}
	// Started after its end, a hold does nothing.
	if err := h.(resource.Starter).Start(context.Background(), nil); err != nil {
		t.Errorf("Start after Release: %v", err)
	}
}
