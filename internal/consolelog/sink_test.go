package consolelog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/statedir"
)

// records keeps what a logger logged, for tests.
type records struct {
	mu   sync.Mutex
	msgs []string // "LEVEL message"
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Level.String()+" "+rec.Message)
	return nil
}

func (r *records) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// toggle is a writer that fails while broken is set.
type toggle struct {
	buf    bytes.Buffer
	broken bool
}

func (w *toggle) Write(p []byte) (int, error) {
	if w.broken {
		return 0, syscall.EIO
	}
	return w.buf.Write(p)
}

// While the log cannot be written the console is still taken and dropped,
// with one warning when that begins and one note when it ends.
func TestSinkWarnsOncePerFailure(t *testing.T) {
	var rec records
	w := &toggle{}
	s := &sink{w: w, log: slog.New(&rec)}
	write := func(text string) {
		t.Helper()
		if n, err := s.Write([]byte(text)); n != len(text) || err != nil {
			t.Fatalf("Write = %d, %v; want all of it taken, without an error", n, err)
		}
	}
	write("a")
	w.broken = true
	for range 1000 {
		write("lost")
	}
	w.broken = false
	write("b")
	write("c")
	w.broken = true
	write("lost")
	want := []string{
		"WARN console log cannot be written: dropping console output until it can",
		"INFO console log written again",
		"WARN console log cannot be written: dropping console output until it can",
	}
	if got := rec.all(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if w.buf.String() != "abc" {
		t.Errorf("log holds %q", w.buf.String())
	}
}

// smallTmpfs mounts a 64 KiB tmpfs on a new directory, or skips t.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts a small tmpfs: needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "cabin-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// fill fills the filesystem of dir with the file it returns.
func fill(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return name
		}
	}
}

// The same over a real full filesystem.
func TestSinkFullDisk(t *testing.T) {
	dir := smallTmpfs(t)
	filler := fill(t, dir)
	fs := files(dir, 1)
	w, err := Open(fs, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var rec records
	s := &sink{w: w, log: slog.New(&rec)}
	line := []byte(strings.Repeat("x", 99) + "\n")
	for range 500 { // 50 KB: several rotations' worth
		s.Write(line)
	}
	if got := rec.all(); len(got) != 1 || !strings.HasPrefix(got[0], "WARN ") {
		t.Fatalf("logged on a full disk:\n%s\nwant one warning", strings.Join(got, "\n"))
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("back\n"))
	if got := rec.all(); len(got) != 2 || got[1] != "INFO console log written again" {
		t.Errorf("logged once there was room again:\n%s", strings.Join(got, "\n"))
	}
	b, err := Read(fs, 1<<20)
	if err != nil || !bytes.HasSuffix(b, []byte("back\n")) {
		t.Errorf("log after the disk had room again: %q, %v", b, err)
	}
}

// A guest writing to its console while the host's disk is full costs one
// warning, however much it writes, and the console is still read (the
// fake QEMU's writes all complete on the one connection).
func TestCopyConsoleFullDisk(t *testing.T) {
	dir := statedir.VMDir(smallTmpfs(t))
	l, err := net.Listen("unix", dir.ConsoleSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	filler := fill(t, dir.Path())
	var rec records
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyConsole(ctx, dir, make(chan struct{}), slog.New(&rec))
	}()
	defer func() { cancel(); <-done }()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := []byte(strings.Repeat("x", 99) + "\n")
	for i := range 2000 {
		if _, err := c.Write(line); err != nil {
			t.Fatalf("console write %d: %v", i, err)
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("back\n"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasSuffix(readLog(t, dir), "back\n") {
		if time.Now().After(deadline) {
			t.Fatalf("the log did not get the console's output once there was room: %q", readLog(t, dir))
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := []string{
		"WARN console log cannot be written: dropping console output until it can",
		"INFO console log written again",
	}
	if got := rec.all(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
