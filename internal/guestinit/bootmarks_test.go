package guestinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

func TestBootMarksFlush(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(kmsg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var b BootMarks
	if err := b.Flush(kmsg); err != nil {
		t.Fatalf("flush with no marks: %v", err)
	}
	start := time.Now().Add(-time.Second)
	b.Mark(bootcfg.MarkMain, start)
	b.Mark(bootcfg.MarkPorts, start.Add(500*time.Millisecond))
	if err := b.Flush(kmsg); err != nil {
		t.Fatal(err)
	}
	b.Mark(bootcfg.MarkReady, time.Now())
	if err := b.Flush(kmsg); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(kmsg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one line a flush, got %q", data)
	}
	first, ok := strings.CutPrefix(lines[0], "<6>")
	if !ok {
		t.Fatalf("line %q: not KERN_INFO", lines[0])
	}
	marks, ok, err := bootcfg.ParseBootMarks(first)
	if err != nil || !ok {
		t.Fatalf("line %q: %v", first, err)
	}
	if d := marks[bootcfg.MarkPorts] - marks[bootcfg.MarkMain]; d != 500*time.Millisecond {
		t.Errorf("ports - main = %v, want 500ms", d)
	}
	if marks[bootcfg.MarkMain] > -time.Second || len(marks) != 2 {
		t.Errorf("marks %v", marks)
	}
	second, _ := strings.CutPrefix(lines[1], "<6>")
	if marks, _, err := bootcfg.ParseBootMarks(second); err != nil || len(marks) != 1 {
		t.Errorf("second flush %q: %v %v (the first's marks written again?)", second, marks, err)
	}
}

func TestBootMarksFlushNoDevice(t *testing.T) {
	var b BootMarks
	b.Mark(bootcfg.MarkMain, time.Now())
	if err := b.Flush(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("flush to a missing device succeeded")
	}
	b.Mark("Bad Name", time.Now())
	if err := b.Flush(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "Bad Name") {
		t.Fatalf("bad mark name: %v", err)
	}
}
