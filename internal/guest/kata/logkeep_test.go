package kata

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// keptSandbox is a sandbox holding one container "c" whose output is kept
// in a log the test writes itself: the log and Logs without a runtime.
func keptSandbox(t *testing.T) (*Sandbox, *logKeeper) {
	t.Helper()
	dir := t.TempDir()
	k, err := newLogKeeper(dir, logFileMax)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Log: testLog(), Bundles: filepath.Join(dir, "bundles")})
	s.containers["c"] = &container{id: "c", state: running, meta: &tracked{logs: k}}
	s.containers["plain"] = &container{id: "plain", state: running, meta: &tracked{}}
	return s, k
}

// collect runs Logs and returns stdout and stderr as sent, and the
// dropped counts.
func collect(t *testing.T, s *Sandbox, ctx context.Context, id string, follow bool, tail int64) (out, errOut string, dropped int64, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = s.Logs(ctx, id, follow, tail, func(le LogEntry) error {
		if le.Time.IsZero() || len(le.Data) == 0 {
			t.Errorf("entry %+v: want a time and data", le)
		}
		dropped += le.Dropped
		if le.Stderr {
			e.Write(le.Data)
		} else {
			o.Write(le.Data)
		}
		return nil
	})
	return o.String(), e.String(), dropped, err
}

func TestLogsKeepsBothStreams(t *testing.T) {
	s, k := keptSandbox(t)
	k.append(streamStdout, time.Now(), []byte("one\ntw"))
	k.append(streamStdout, time.Now(), []byte("o\nthree\n"))
	k.append(streamStderr, time.Now(), []byte("oops\n"))
	out, errOut, dropped, err := collect(t, s, context.Background(), "c", false, -1)
	if err != nil || out != "one\ntwo\nthree\n" || errOut != "oops\n" || dropped != 0 {
		t.Fatalf("Logs: %q %q dropped %d, %v", out, errOut, dropped, err)
	}
	// Lines of both streams count, in the order they came.
	out, errOut, _, err = collect(t, s, context.Background(), "c", false, 2)
	if err != nil || out != "three\n" || errOut != "oops\n" {
		t.Fatalf("Logs tail 2: %q %q, %v", out, errOut, err)
	}
	out, errOut, _, err = collect(t, s, context.Background(), "c", false, 3)
	if err != nil || out != "two\nthree\n" || errOut != "oops\n" {
		t.Fatalf("Logs tail 3: %q %q, %v", out, errOut, err)
	}
	out, _, _, err = collect(t, s, context.Background(), "c", false, 100)
	if err != nil || out != "one\ntwo\nthree\n" {
		t.Fatalf("Logs tail 100: %q, %v", out, err)
	}
	out, errOut, _, err = collect(t, s, context.Background(), "c", false, 0)
	if err != nil || out != "" || errOut != "" {
		t.Fatalf("Logs tail 0: %q %q, %v", out, errOut, err)
	}
}

func TestLogsRefused(t *testing.T) {
	s, _ := keptSandbox(t)
	for _, c := range []struct {
		id   string
		kind error
	}{
		{"plain", errdefs.ErrFailedPrecondition},
		{"missing", errdefs.ErrNotFound},
		{"../x", errdefs.ErrInvalidArgument},
		{"", errdefs.ErrInvalidArgument},
	} {
		if _, _, _, err := collect(t, s, context.Background(), c.id, false, -1); !errors.Is(err, c.kind) {
			t.Errorf("Logs(%q): %v, want %v", c.id, err, c.kind)
		}
	}
}

// TestLogsBounded: a flood keeps at most two files' worth, the oldest
// output dropped and counted; a reader from the start learns how much.
func TestLogsBounded(t *testing.T) {
	s, k := keptSandbox(t)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	const lines = 5000 // about 5 MiB
	for range lines {
		k.append(streamStdout, time.Now(), line)
	}
	var size int64
	for _, name := range []string{logFile, logFileOld} {
		st, err := os.Stat(filepath.Join(k.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		size += st.Size()
	}
	if size > 2*logFileMax {
		t.Errorf("log files hold %d bytes; the bound is %d", size, 2*logFileMax)
	}
	out, _, dropped, err := collect(t, s, context.Background(), "c", false, -1)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(out))+dropped != lines*int64(len(line)) || len(out) < logFileMax/2 {
		t.Errorf("kept %d bytes and dropped %d of %d", len(out), dropped, lines*len(line))
	}
	if !strings.HasSuffix(out, string(line)) || len(out)%len(line) != 0 {
		t.Errorf("kept output is not whole lines")
	}
}

// TestLogsFollow: a follower gets what comes after it started, across
// rotations, and ends when the output does; another, when its client
// goes.
func TestLogsFollow(t *testing.T) {
	s, k := keptSandbox(t)
	k.append(streamStdout, time.Now(), []byte("before\n"))
	type result struct {
		out     string
		dropped int64
		err     error
	}
	got := make(chan result, 1)
	started := make(chan struct{})
	go func() {
		var b bytes.Buffer
		var dropped int64
		err := s.Logs(context.Background(), "c", true, -1, func(e LogEntry) error {
			if b.Len() == 0 {
				close(started)
			}
			b.Write(e.Data)
			dropped += e.Dropped
			return nil
		})
		got <- result{b.String(), dropped, err}
	}()
	<-started
	var want strings.Builder
	want.WriteString("before\n")
	chunk := strings.Repeat("y", 30000) + "\n"
	for i := range 100 { // about 3 MiB: past two rotations while following
		l := fmt.Sprintf("%d %s", i, chunk)
		k.append(streamStdout, time.Now(), []byte(l))
		want.WriteString(l)
	}
	k.finish()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	// A follower that keeps up misses nothing; this one may have fallen
	// behind a file (Logs sends as it reads, so anywhere along), and then
	// it was told how much it missed, and what it has ends as the output.
	if r.out != want.String() && (int64(len(r.out))+r.dropped != int64(want.Len()) || !strings.HasSuffix(want.String(), r.out[strings.LastIndex(r.out[:len(r.out)-1], "\n")+1:])) {
		t.Errorf("followed %d bytes and was told of %d dropped, not the output's (%d)", len(r.out), r.dropped, want.Len())
	}

	ctx, cancel := context.WithCancel(context.Background())
	s2, _ := keptSandbox(t)
	done := make(chan error, 1)
	go func() { done <- s2.Logs(ctx, "c", true, -1, func(LogEntry) error { return nil }) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("follow whose client went: %v", err)
	}
}

// TestLogsFullDisk: output the log cannot take is dropped, counted, and
// the writer goes on.
func TestLogsFullDisk(t *testing.T) {
	s, k := keptSandbox(t)
	k.append(streamStdout, time.Now(), []byte("kept\n"))
	// What a full tmpfs does to a write.
	k.f.Close()
	k.append(streamStdout, time.Now(), []byte("lost\n"))
	out, _, dropped, err := collect(t, s, context.Background(), "c", false, -1)
	if err != nil || out != "kept\n" || dropped != 5 {
		t.Errorf("Logs after a failed write: %q dropped %d, %v", out, dropped, err)
	}
}

func TestContainerOptions(t *testing.T) {
	good := map[string]string{AnnotationImage: "busybox:latest", AnnotationCreated: "2026-01-02T03:04:05Z",
		AnnotationLogs: "keep", AnnotationAutoremove: "true"}
	o, err := containerOptions(good)
	if err != nil || !o.keepLogs || !o.autoremove || o.image != "busybox:latest" || o.created.Year() != 2026 {
		t.Fatalf("containerOptions: %+v, %v", o, err)
	}
	if o, err := containerOptions(nil); err != nil || o.keepLogs || o.autoremove {
		t.Fatalf("no annotations: %+v, %v", o, err)
	}
	for k, v := range map[string]string{AnnotationLogs: "yes", AnnotationAutoremove: "1", AnnotationCreated: "yesterday",
		AnnotationImage: strings.Repeat("i", 5000)} {
		_, err := containerOptions(map[string]string{k: v})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%.20q: %v; want invalid argument naming it", k, v, err)
		}
	}
}

func FuzzParseRecords(f *testing.F) {
	k, err := newLogKeeper(f.TempDir(), logFileMax)
	if err != nil {
		f.Fatal(err)
	}
	k.append(streamStdout, time.Now(), []byte("hello\n"))
	k.append(streamStderr, time.Now(), []byte("err"))
	b, _ := os.ReadFile(filepath.Join(k.dir, logFile))
	f.Add(b)
	f.Add(b[:20])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, rest, err := parseRecords(b)
		if err != nil {
			return
		}
		n := rest
		for _, r := range recs {
			if r.stream != streamStdout && r.stream != streamStderr || len(r.data) > maxRecordData {
				t.Fatalf("record %+v", r)
			}
			n += recordHeader + len(r.data)
		}
		if n != len(b) {
			t.Fatalf("records and rest cover %d of %d bytes", n, len(b))
		}
		tailLines(recs, 3)
	})
}

// FuzzContainerOptions: whatever annotations a host sends, the options
// are refused with an error naming the annotation, or hold exactly what
// was asked.
func FuzzContainerOptions(f *testing.F) {
	f.Add("busybox", "2026-01-02T03:04:05Z", "keep", "true", "")
	f.Add("", "", "", "false", "")
	f.Add("x", "yesterday", "always", "1", "1m")
	f.Add("x", "", "keep", "", "65536")
	f.Fuzz(func(t *testing.T, image, created, logs, autoremove, logMax string) {
		a := map[string]string{AnnotationImage: image, AnnotationCreated: created, AnnotationLogs: logs, AnnotationAutoremove: autoremove}
		if logMax != "" {
			a[AnnotationLogsMaxSize] = logMax
		}
		o, err := containerOptions(a)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "io.cabinvm.") {
				t.Fatalf("%v: want invalid argument naming the annotation", err)
			}
			return
		}
		if o.keepLogs != (logs == LogsKeep) || o.autoremove != (autoremove == "true") || o.image != image {
			t.Fatalf("%+v from %v", o, a)
		}
		if o.logMax < minLogFileMax || o.logMax > maxLogFileMax || logMax == "" && o.logMax != logFileMax ||
			logMax != "" && strconv.FormatInt(o.logMax, 10) != strings.TrimLeft(logMax, "+0") {
			t.Fatalf("log bound %d from %q", o.logMax, logMax)
		}
	})
}

func TestCoalesce(t *testing.T) {
	t0 := time.Now()
	recs := []record{
		{streamStdout, t0, []byte("a")},
		{streamStdout, t0.Add(time.Millisecond), []byte("b")},
		{streamStderr, t0.Add(2 * time.Millisecond), []byte("c")},
		{streamStdout, t0.Add(3 * time.Millisecond), []byte("d")},
		{streamStdout, t0.Add(time.Second), []byte("e")},
	}
	var got []string
	var scratch []byte
	err := coalesce(recs, &scratch, func(e LogEntry) error {
		got = append(got, fmt.Sprintf("%v:%s@%v", e.Stderr, e.Data, e.Time.Sub(t0)))
		// A record alone goes as its own bytes, not a copy.
		if len(e.Data) == 1 && e.Data[0] == 'c' && &e.Data[0] != &recs[2].data[0] {
			t.Error("a record alone was copied")
		}
		return nil
	})
	want := []string{"false:ab@0s", "true:c@2ms", "false:d@3ms", "false:e@1s"}
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("coalesce: %v, %v; want %v", got, err, want)
	}
	if string(recs[0].data) != "a" {
		t.Error("coalesce changed a record")
	}
	// An error from send ends it.
	calls := 0
	stop := errors.New("stop")
	if err := coalesce(recs, &scratch, func(LogEntry) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("after send failed: %v, %d calls", err, calls)
	}
}
