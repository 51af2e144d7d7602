package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func files(dir string, keep int) Files {
	return Files{
		Live:    filepath.Join(dir, "console.log"),
		Rotated: func(n int) string { return filepath.Join(dir, fmt.Sprintf("console.log.%d", n)) },
		Keep:    keep,
	}
}

func TestRotationCapsDiskUse(t *testing.T) {
	dir := t.TempDir()
	fs := files(dir, 2)
	w, err := Open(fs, 100)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; i < 100; i++ {
		line := fmt.Sprintf("line %03d\n", i)
		all.WriteString(line)
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	entries, _ := os.ReadDir(dir)
	var total int64
	for _, e := range entries {
		info, _ := e.Info()
		if info.Size() > 100 {
			t.Errorf("%s is %d bytes, cap 100", e.Name(), info.Size())
		}
		total += info.Size()
	}
	if len(entries) != 3 || total > 300 {
		t.Errorf("%d files, %d bytes; want live + 2 rotated, at most 300 bytes", len(entries), total)
	}
	got, err := Read(fs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// What is kept is the end of what was written, in order, whole lines.
	if !strings.HasSuffix(all.String(), string(got)) || !strings.HasPrefix(string(got), "line ") {
		t.Errorf("Read gave %q, not a line-aligned tail of the output", got)
	}
}

func TestReadCapKeepsNewest(t *testing.T) {
	dir := t.TempDir()
	fs := files(dir, 5)
	w, _ := Open(fs, 10)
	w.Write([]byte("aaaaaaaaa\nbbbbbbbbb\nccccccccc\n"))
	w.Close()
	got, err := Read(fs, 15)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "bbbb\nccccccccc\n" {
		t.Errorf("Read = %q", got)
	}
}

func TestLongLineIsCut(t *testing.T) {
	dir := t.TempDir()
	fs := files(dir, 1)
	w, _ := Open(fs, 4)
	if n, err := w.Write([]byte("abcdefgh")); err != nil || n != 8 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w.Close()
	got, _ := Read(fs, 100)
	if string(got) != "abcdefgh" {
		t.Errorf("Read = %q", got)
	}
}

func TestAppendsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	fs := files(dir, 1)
	w, _ := Open(fs, 100)
	w.Write([]byte("one\n"))
	w.Close()
	w, _ = Open(fs, 100)
	w.Write([]byte("two\n"))
	w.Close()
	if got, _ := Read(fs, 100); string(got) != "one\ntwo\n" {
		t.Errorf("Read = %q", got)
	}
}

// A live file left over from a larger cap (re-adopting a VM reopens it) is
// rotated away whole by the first Write, not cut, and the new output starts
// a live file within the cap.
func TestOversizedLiveFileIsRotated(t *testing.T) {
	old := strings.Repeat("old line\n", 5) // 45 bytes, cap 10
	for _, keep := range []int{0, 1} {
		t.Run(fmt.Sprintf("keep=%d", keep), func(t *testing.T) {
			dir := t.TempDir()
			fs := files(dir, keep)
			if err := os.WriteFile(fs.Live, []byte(old), 0o640); err != nil {
				t.Fatal(err)
			}
			w, err := Open(fs, 10)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := w.Write([]byte("new\n")); err != nil || n != 4 {
				t.Fatalf("Write = %d, %v", n, err)
			}
			w.Close()
			live, err := os.ReadFile(fs.Live)
			if err != nil {
				t.Fatal(err)
			}
			if string(live) != "new\n" {
				t.Errorf("live = %q, want %q", live, "new\n")
			}
			want := "new\n"
			if keep > 0 {
				want = old + want
			}
			if got, _ := Read(fs, 1<<20); string(got) != want {
				t.Errorf("Read = %q, want %q", got, want)
			}
			if got, _ := Read(fs, 10); string(got) != want[max(len(want)-10, 0):] {
				t.Errorf("Read capped at 10 = %q, want the newest 10 bytes of %q", got, want)
			}
		})
	}
}

// A rotation that fails is reported, and the writer recovers once the cause
// is gone instead of dropping output for good.
func TestFailedRotationIsRetried(t *testing.T) {
	dir := t.TempDir()
	fs := files(dir, 1)
	// A non-empty directory where the rotated file goes: os.Remove cannot
	// clear it and renaming the live file onto it fails, even as root.
	block := filepath.Join(fs.Rotated(1), "x")
	if err := os.MkdirAll(block, 0o750); err != nil {
		t.Fatal(err)
	}
	w, err := Open(fs, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("aaaaaaaaa\n")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if n, err := w.Write([]byte("bbbb\n")); err == nil || errors.Is(err, os.ErrClosed) {
			t.Fatalf("Write with rotation blocked = %d, %v; want the rotation's error", n, err)
		}
	}
	if live, _ := os.ReadFile(fs.Live); string(live) != "aaaaaaaaa\n" {
		t.Errorf("live while rotation blocked = %q", live)
	}
	if err := os.RemoveAll(fs.Rotated(1)); err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write([]byte("cccc\n")); err != nil || n != 5 {
		t.Fatalf("Write after unblocking = %d, %v", n, err)
	}
	w.Close()
	if got, _ := Read(fs, 100); string(got) != "aaaaaaaaa\ncccc\n" {
		t.Errorf("Read = %q", got)
	}
	if _, err := w.Write([]byte("dddd\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v, want os.ErrClosed", err)
	}
}
