package consolelog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// readAll reads r to its end.
func readAll(t *testing.T, r *Reader) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	buf := make([]byte, 7) // small: reads end inside lines and files
	for {
		n, err := r.Read(ctx, buf)
		out.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return out.String()
		}
		if err != nil {
			t.Fatalf("Read after %q: %v", out.String(), err)
		}
	}
}

// readN reads from r until it has n bytes.
func readN(t *testing.T, r *Reader, n int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	buf := make([]byte, 5)
	for out.Len() < n {
		m, err := r.Read(ctx, buf[:min(len(buf), n-out.Len())])
		out.Write(buf[:m])
		if err != nil {
			t.Fatalf("Read after %q: %v", out.String(), err)
		}
	}
	return out.String()
}

func openReader(t *testing.T, fs Files, opts ReadOptions) *Reader {
	t.Helper()
	r, err := OpenReader(fs, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// writeLog writes text through a Writer capped at maxBytes, so that it is
// spread over the live file and rotated ones.
func writeLog(t *testing.T, fs Files, maxBytes int64, text string) {
	t.Helper()
	w, err := Open(fs, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte(text)); err != nil {
		t.Fatal(err)
	}
}

func lines(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "line %04d\n", i)
	}
	return b.String()
}

func TestReaderReadsAllInOrder(t *testing.T) {
	fs := files(t.TempDir(), 5)
	all := lines(1, 20) // 200 bytes in files of at most 50
	writeLog(t, fs, 50, all)
	if _, err := os.Stat(fs.Rotated(3)); err != nil {
		t.Fatalf("the log was not rotated as the test means it to be: %v", err)
	}
	r := openReader(t, fs, ReadOptions{TailLines: -1})
	if got := readAll(t, r); got != all {
		t.Errorf("read %q, want %q", got, all)
	}
	// Tail agrees, and says how big the whole is.
	got, total, err := Tail(fs, 25)
	if err != nil || string(got) != all[len(all)-25:] || total != int64(len(all)) {
		t.Errorf("Tail = %q, %d, %v", got, total, err)
	}
}

func TestReaderEmptyLog(t *testing.T) {
	fs := files(t.TempDir(), 2)
	for _, tail := range []int{-1, 0, 3} {
		r := openReader(t, fs, ReadOptions{TailLines: tail})
		if got := readAll(t, r); got != "" {
			t.Errorf("tail %d of no log: %q", tail, got)
		}
	}
}

func TestReaderTailLines(t *testing.T) {
	all := lines(1, 20)
	for _, tc := range []struct {
		name string
		text string
		n    int
		want string
	}{
		{"none", all, 0, ""},
		{"one", all, 1, lines(20, 20)},
		{"across files", all, 7, lines(14, 20)},
		{"all of them", all, 20, all},
		{"more than there are", all, 100, all},
		{"last line unfinished", all + "part", 2, lines(20, 20) + "part"},
		{"only an unfinished line", "part", 1, "part"},
		{"empty lines", "a\n\n\nb\n", 3, "\n\nb\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := files(t.TempDir(), 5)
			writeLog(t, fs, 50, tc.text)
			r := openReader(t, fs, ReadOptions{TailLines: tc.n})
			if got := readAll(t, r); got != tc.want {
				t.Errorf("last %d lines: %q, want %q", tc.n, got, tc.want)
			}
		})
	}
}

// A follower reads what is written after it reached the end, across
// rotations, one or several at a time and in the middle of a file it was
// reading, without losing or repeating a byte; and it ends after the last
// output once Ended closes.
func TestFollowAcrossRotations(t *testing.T) {
	fs := files(t.TempDir(), 3)
	w, err := Open(fs, 100) // ten lines a file
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte(lines(1, 3)))
	ended := make(chan struct{})
	r := openReader(t, fs, ReadOptions{TailLines: 2, Follow: true, Ended: ended, Poll: time.Millisecond})
	if got := readN(t, r, 20); got != lines(2, 3) {
		t.Fatalf("tail: %q", got)
	}
	write := func(from, to int) {
		t.Helper()
		if _, err := w.Write([]byte(lines(from, to))); err != nil {
			t.Fatal(err)
		}
	}
	write(4, 5) // within the live file
	if got := readN(t, r, 20); got != lines(4, 5) {
		t.Errorf("after a write: %q", got)
	}
	write(6, 14) // one rotation
	if got := readN(t, r, 90); got != lines(6, 14) {
		t.Errorf("across a rotation: %q", got)
	}
	write(15, 44) // three: the file last read is next to go
	if got := readN(t, r, 300); got != lines(15, 44) {
		t.Errorf("across three rotations: %q", got)
	}
	write(45, 46)
	if got := readN(t, r, 7); got != lines(45, 46)[:7] {
		t.Errorf("part of a line: %q", got)
	}
	write(47, 50) // fills the file half read...
	write(51, 51) // ... which is rotated
	close(ended)
	if got, want := readAll(t, r), lines(45, 51)[7:]; got != want {
		t.Errorf("after Ended: %q, want %q", got, want)
	}
}

// A follower that sees more rotations than there are rotated files
// between two reads has lost output, and says so.
func TestFollowerFellBehind(t *testing.T) {
	fs := files(t.TempDir(), 2)
	w, err := Open(fs, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte(lines(1, 1)))
	r := openReader(t, fs, ReadOptions{TailLines: -1, Follow: true, Poll: time.Millisecond})
	readN(t, r, 10)
	w.Write([]byte(lines(2, 10))) // nine files' worth; two are kept
	_, err = r.Read(context.Background(), make([]byte, 100))
	if !errors.Is(err, ErrFellBehind) || !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Errorf("Read = %v, want ErrFellBehind", err)
	}
}

// A follower waits until the log exists, and stops waiting when its
// context ends.
func TestFollowLogNotYetWritten(t *testing.T) {
	fs := files(t.TempDir(), 2)
	r := openReader(t, fs, ReadOptions{TailLines: 0, Follow: true, Poll: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if n, err := r.Read(ctx, make([]byte, 10)); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read of no log = %d, %v; want to wait until the context ends", n, err)
	}
	writeLog(t, fs, 20, lines(1, 3))
	if got := readN(t, r, 30); got != lines(1, 3) {
		t.Errorf("read %q", got)
	}
}

// Without rotated files the live file is emptied in place when full; a
// follower starts it again.
func TestFollowTruncatedLog(t *testing.T) {
	fs := files(t.TempDir(), 0)
	w, err := Open(fs, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte(lines(1, 2)))
	r := openReader(t, fs, ReadOptions{TailLines: -1, Follow: true, Poll: time.Millisecond})
	readN(t, r, 20)
	w.Write([]byte(lines(3, 3)))
	readN(t, r, 10)
	w.Write([]byte(lines(4, 4))) // empties the file, then writes this
	if got := readN(t, r, 10); got != lines(4, 4) {
		t.Errorf("after the cut: %q", got)
	}
}

// A writer and a follower at once, with the race detector watching: the
// follower gets exactly what was written, whatever the interleaving of
// its reads and scans with the writer's rotations. No file is dropped
// (there are more rotated files than rotations), so it cannot fall
// behind however the two are scheduled.
func TestFollowConcurrentWriter(t *testing.T) {
	fs := files(t.TempDir(), 60)
	w, err := Open(fs, 512)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	r := openReader(t, fs, ReadOptions{TailLines: -1, Follow: true, Ended: ended, Poll: time.Millisecond})
	all := lines(1, 2500) // 25,000 bytes: about 50 rotations
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ended)
		defer w.Close()
		for rest := all; rest != ""; {
			n := min(len(rest), 1+len(rest)%97) // writes of assorted sizes
			if _, err := w.Write([]byte(rest[:n])); err != nil {
				t.Error(err)
				return
			}
			rest = rest[n:]
		}
	}()
	got := readAll(t, r)
	wg.Wait()
	if got != all {
		i := 0
		for i < len(got) && i < len(all) && got[i] == all[i] {
			i++
		}
		t.Errorf("read %d bytes, wrote %d; they differ from byte %d: %q", len(got), len(all), i, got[i:min(i+40, len(got))])
	}
}

// Snapshots taken while the log rotates on every write hold each file
// once, oldest first: a file the scan meets twice, having moved during
// it, is one file, and one that moved the other way is never missed.
func TestSnapshotDuringRotations(t *testing.T) {
	fs := files(t.TempDir(), 5)
	w, err := Open(fs, 10)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer w.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%10 == 0 {
				// A pause now and then, for scans that see no rotation.
				time.Sleep(time.Millisecond)
			}
			// One line fills a file: every write rotates.
			if _, err := fmt.Fprintf(w, "%09d\n", i); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer wg.Wait()
	defer close(stop)
	buf := make([]byte, 10)
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		segs, _, err := snapshot(fs)
		if err != nil {
			t.Fatal(err)
		}
		prev := -1
		var seen []string
		for _, s := range segs {
			n, _ := s.f.ReadAt(buf, 0)
			if n == 0 {
				continue // a live file not yet written
			}
			var i int
			fmt.Sscanf(string(buf[:n]), "%d", &i)
			seen = append(seen, strings.TrimSpace(string(buf[:n])))
			if i <= prev {
				t.Fatalf("snapshot holds, oldest first: %v", seen)
			}
			prev = i
		}
		closeAll(segs)
	}
}
