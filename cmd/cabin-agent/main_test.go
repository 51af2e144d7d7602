package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
)

func TestNeedsListenWhenNotInit(t *testing.T) {
	if code := devMain(nil); code != 2 {
		t.Fatalf("devMain() = %d, want 2 (usage)", code)
	}
}

type startupListener struct {
	vmtools.UnimplementedStartupListenerServer
	ready chan struct{}
}

func (l *startupListener) VmReady(context.Context, *vmtools.EmptyMessage) (*vmtools.EmptyMessage, error) {
	l.ready <- struct{}{}
	return &vmtools.EmptyMessage{}, nil
}

// buildFlags are how the agent must be built for the image: static,
// stripped, and without grpc's x/net/trace (html/template and friends,
// about 2.8 MB of binary that would all be resident).
var buildFlags = []string{"-tags", "grpcnotrace", "-trimpath", "-ldflags", "-s -w"}

// rssBudget is the most resident memory the agent may use once serving.
// It was 12 MiB until the agent took on cabin cp's tar streams, output
// read-ahead and the Logs sender (about 0.2 MiB more resident binary and
// heap, measured 12.4 MiB): a guard against growth nobody meant, not a
// target; the bench's rpc part measures the agent in a VM.
const rssBudget = 12<<20 + 640<<10

// TestListenMode builds the agent as the image should, runs it with
// --listen, drives it as the host would, checks its memory against the
// budget, and shuts it down: in this mode Shutdown stops the process.
func TestListenMode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent binary")
	}
	dir := t.TempDir()
	// CABIN_AGENT tests a binary built elsewhere, e.g. the one an image
	// carries.
	bin := os.Getenv("CABIN_AGENT")
	if bin == "" {
		bin = filepath.Join(dir, "cabin-agent")
		build := exec.Command("go", append(append([]string{"build"}, buildFlags...), "-o", bin, ".")...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build: %v\n%s", err, out)
		}
	}
	socket := filepath.Join(dir, "agent.sock")
	agent := exec.Command(bin, "--listen", socket)
	agent.Stderr = os.Stderr
	// As in a one-vCPU guest, whatever this machine has.
	agent.Env = append(os.Environ(), "GOMAXPROCS=1")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() { agent.Process.Kill() })

	var sess *channel.Session
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if sess, err = channel.DialSocket(socket, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent socket: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer sess.Close()
	listener := &startupListener{ready: make(chan struct{}, 1)}
	srv := channel.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	vmtools.RegisterStartupListenerServer(srv, listener)
	go srv.Serve(sess)
	defer srv.Stop()
	select {
	case <-listener.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("no VmReady")
	}

	conn, err := channel.Dial(sess, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check, err := kata.NewHealthClient(conn).Check(ctx, &kata.CheckRequest{})
	if err != nil || check.Status != kata.HealthCheckResponse_SERVING {
		t.Fatalf("Check = %v, %v", check, err)
	}
	maitred := vmtools.NewMaitredClient(conn)
	for range 20 {
		if _, err := maitred.GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := maitred.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: []string{"true"}, WaitForExit: true}); err != nil {
		t.Fatal(err)
	}
	// The network calls that only read (here the host's network: this
	// agent is not in a VM), so that netlink's share counts.
	network := kata.NewAgentServiceClient(conn)
	if _, err := network.ListInterfaces(ctx, &kata.ListInterfacesRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := network.ListRoutes(ctx, &kata.ListRoutesRequest{}); err != nil {
		t.Fatal(err)
	}
	// The host's page cache holds the whole binary, as the guest's
	// initramfs does, so resident file pages compare.
	rss := vmRSS(t, agent.Process.Pid)
	t.Logf("agent RSS after %d RPCs: %d KiB", 24, rss>>10)
	if rss > rssBudget {
		t.Errorf("agent RSS %d KiB is over the %d KiB budget", rss>>10, rssBudget>>10)
	}

	if _, err := maitred.Shutdown(ctx, &vmtools.EmptyMessage{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent still running after Shutdown")
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// vmRSS returns a process's resident set size in bytes.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/pid/status")
	return 0
}
