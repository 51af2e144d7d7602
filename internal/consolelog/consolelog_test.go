package consolelog

import (
	"bytes"
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
