package kata

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// joined is the data of recs, one after another, and each record's
// stream.
func joined(recs []record) string {
	var b bytes.Buffer
	for _, r := range recs {
		fmt.Fprintf(&b, "%d:%s|", r.stream, r.data)
	}
	return b.String()
}

// tailRest, reading a chunk at a time and keeping only what may hold the
// last n lines, finds the records tailLines finds in the whole log: over
// two files (the bound passed), lines of every length, split across
// records or not, of both streams, with and without a last newline.
func TestTailRestIsTailLines(t *testing.T) {
	dir := t.TempDir()
	k, err := newLogKeeper(dir, minLogFileMax)
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	written := 0
	for i := 0; written < 3*minLogFileMax; i++ {
		var line []byte
		for j := rnd.IntN(3); j >= 0; j-- {
			line = append(line, fmt.Sprintf("line %d part %d %s", i, j, bytes.Repeat([]byte{'x'}, rnd.IntN(2000)))...)
			if rnd.IntN(4) > 0 {
				line = append(line, '\n')
			}
		}
		st := streamStdout
		if rnd.IntN(5) == 0 {
			st = streamStderr
		}
		k.append(st, time.Now(), line)
		written += len(line)
	}
	all, _, err := k.tailRest(k.oldest(), 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 || k.gen < 2 {
		t.Fatalf("%d records, %d files: the log did not pass its bound", len(all), k.gen)
	}
	for _, n := range []int64{0, 1, 2, 3, 7, 50, 400, 5000, 1 << 30} {
		got, last, err := k.tailRest(k.oldest(), n)
		if err != nil {
			t.Fatal(err)
		}
		if want := joined(tailLines(all, n)); joined(got) != want {
			t.Errorf("last %d lines: %d bytes, want %d", n, len(joined(got)), len(want))
		}
		if last.f != nil {
			t.Errorf("last %d lines: the final span is not the end", n)
		}
	}
	// One with its last byte a newline, and one without.
	for _, end := range []string{"tail\n", "tail"} {
		k.append(streamStdout, time.Now(), []byte("a\nb\n"+end))
		all, _, _ := k.tailRest(k.oldest(), 1<<40)
		for n := range int64(4) {
			got, _, _ := k.tailRest(k.oldest(), n)
			if joined(got) != joined(tailLines(all, n)) {
				t.Errorf("ending %q, last %d lines: %q", end, n, joined(got))
			}
		}
	}
}

// A container's log bound is what its annotation says, within limits;
// refused outside them, or without the output kept.
func TestLogsMaxSizeAnnotation(t *testing.T) {
	for v, want := range map[string]int64{"65536": 65536, "8388608": 8 << 20, "67108864": 64 << 20} {
		o, err := containerOptions(map[string]string{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: v})
		if err != nil || o.logMax != want {
			t.Errorf("%s: %d, %v; want %d", v, o.logMax, err, want)
		}
	}
	if o, err := containerOptions(map[string]string{AnnotationLogs: LogsKeep}); err != nil || o.logMax != logFileMax {
		t.Errorf("no bound asked: %d, %v; want %d", o.logMax, err, logFileMax)
	}
	for _, bad := range []map[string]string{
		{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: "65535"},
		{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: "67108865"},
		{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: "1m"},
		{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: "-1"},
		{AnnotationLogs: LogsKeep, AnnotationLogsMaxSize: ""},
		{AnnotationLogsMaxSize: "1048576"},
	} {
		if _, err := containerOptions(bad); err == nil || !bytes.Contains([]byte(err.Error()), []byte(AnnotationLogsMaxSize)) {
			t.Errorf("%v: %v; want an error naming %s", bad, err, AnnotationLogsMaxSize)
		}
	}
}

// The log keeps between its bound and twice it.
func TestLogBound(t *testing.T) {
	const max = 256 << 10
	k, err := newLogKeeper(t.TempDir(), max)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	for range 100 {
		k.append(streamStdout, time.Now(), data)
	}
	all, _, err := k.tailRest(k.oldest(), 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, r := range all {
		kept += len(r.data)
	}
	if kept < max-recordHeader-len(data) || kept > 2*max {
		t.Errorf("kept %d bytes; want between %d and %d", kept, max, 2*max)
	}
}
