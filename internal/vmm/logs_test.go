package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// readLog reads r to its end, or to its error.
func readLog(r *LogReader) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	buf := make([]byte, 4)
	for {
		n, err := r.Read(ctx, buf)
		out.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return out.String(), nil
		}
		if err != nil {
			return out.String(), err
		}
	}
}

func appendFile(t *testing.T, name, text string) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// startWithLog starts the VM name with a console log of two files.
func startWithLog(t *testing.T, e *env, name string) statedir.VMDir {
	t.Helper()
	events, cancel := watch(e.m)
	defer cancel()
	if _, _, err := e.m.Start(context.Background(), spec(name)); err != nil {
		t.Fatal(err)
	}
	events.await(t, EventStarted, name)
	dir := e.root.VM(statedir.VMID("", name))
	appendFile(t, dir.RotatedLog(1), "one\ntwo\n")
	appendFile(t, dir.ConsoleLog(), "three\n")
	return dir
}

func TestOpenLog(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.OpenLog(Key{Name: ".."}, LogOptions{TailLines: -1}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("log of a bad name: %v", err)
	}
	if _, err := e.m.OpenLog(Key{Name: "none"}, LogOptions{TailLines: -1}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("log of an unknown VM: %v", err)
	}
	startWithLog(t, e, "l")
	key := Key{Name: "l"}
	for _, tc := range []struct {
		tail int
		want string
	}{{-1, "one\ntwo\nthree\n"}, {2, "two\nthree\n"}, {0, ""}} {
		r, err := e.m.OpenLog(key, LogOptions{TailLines: tc.tail})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readLog(r); got != tc.want || err != nil {
			t.Errorf("tail %d: %q, %v; want %q", tc.tail, got, err, tc.want)
		}
		r.Close()
	}
	if b, total, err := e.m.LogTail(key, 4); string(b) != "ree\n" || total != 14 || err != nil {
		t.Errorf("LogTail = %q, %d, %v", b, total, err)
	}
}

// A follower of a running VM gets what it writes until it stops, the
// last of it included, and then the end; one of a VM that is not running
// ends at the end of its log.
func TestFollowLogEndsWithTheRun(t *testing.T) {
	e := newEnv(t)
	dir := startWithLog(t, e, "f")
	key := Key{Name: "f"}
	r, err := e.m.OpenLog(key, LogOptions{TailLines: 1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := r.Read(ctx, buf); string(buf[:n]) != "three\n" || err != nil {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	appendFile(t, dir.ConsoleLog(), "four\n")
	if n, err := r.Read(ctx, buf); string(buf[:n]) != "four\n" || err != nil {
		t.Fatalf("Read while running = %q, %v", buf[:n], err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if n, err := r.Read(short, buf); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read at the end while running = %q, %v; want it to wait", buf[:n], err)
	}
	appendFile(t, dir.ConsoleLog(), "five\n")
	if err := e.m.Stop(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if got, err := readLog(r); got != "five\n" || err != nil {
		t.Errorf("after the stop: %q, %v; want the last output, then the end", got, err)
	}

	r, err = e.m.OpenLog(key, LogOptions{TailLines: -1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := readLog(r); got != "one\ntwo\nthree\nfour\nfive\n" || err != nil {
		t.Errorf("follow of a stopped VM: %q, %v; want its log, then the end", got, err)
	}
}

// A follower whose manager closes (cabind stops) hears it is unavailable.
func TestFollowLogManagerCloses(t *testing.T) {
	e := newEnv(t)
	startWithLog(t, e, "c")
	r, err := e.m.OpenLog(Key{Name: "c"}, LogOptions{TailLines: 0, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := readLog(r)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	e.m.Close()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("follower after Close: %v, want unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower still waits after Close")
	}
}
