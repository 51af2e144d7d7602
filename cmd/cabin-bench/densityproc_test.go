package main

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		bad      bool
	}{
		{name: "qemu", in: "4242 (qemu-system-x86) S 1 4241 4241 0 -1 4194624 1000 0 0 0 1234 567 0 0 20 0 4 0 100 0 0",
			want: 1801},
		// A command name with spaces and a ')' of its own: fields count
		// from the last ')'.
		{name: "odd comm", in: "7 (a) b) c) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1", want: 11},
		{name: "no paren", in: "7 qemu R 1 1 1 0 -1 0 0 0 0 0 5 6", bad: true},
		{name: "short", in: "7 (qemu) R 1 1 1", bad: true},
		{name: "not a number", in: "7 (q) R 1 1 1 0 -1 0 0 0 0 0 x 6", bad: true},
		{name: "overflow", in: "7 (q) R 1 1 1 0 -1 0 0 0 0 0 18446744073709551615 1", bad: true},
	} {
		got, err := parseStatCPU([]byte(tc.in))
		if tc.bad {
			if err == nil {
				t.Errorf("%s: got %d, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}

// TestReadProcCPUSelf reads this process's own stat and threads.
func TestReadProcCPUSelf(t *testing.T) {
	p, err := readProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.runs == 0 {
		t.Errorf("no thread of this test has run: %+v", p)
	}
}

func TestParseSchedstatRuns(t *testing.T) {
	if n, err := parseSchedstatRuns([]byte("123 456 789\n")); err != nil || n != 789 {
		t.Errorf("got %d, %v; want 789", n, err)
	}
	for _, in := range []string{"", "1 2", "1 2 3 4", "1 2 -3"} {
		if n, err := parseSchedstatRuns([]byte(in)); err == nil {
			t.Errorf("%q: got %d, want an error", in, n)
		}
	}
}

const interrupts = `           CPU0       CPU1
  0:         46          0   IO-APIC   2-edge      timer
  4:        312         10   IO-APIC   4-edge      ttyS0
 49:         13          1   IO-APIC  49-edge      virtio0
NMI:          0          0   Non-maskable interrupts
LOC:       4506        300   Local timer interrupts
ERR:          0
MIS:          0
`

func TestParseInterrupts(t *testing.T) {
	m, err := parseInterrupts([]byte(interrupts))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"0 timer": 46, "4 ttyS0": 322, "49 virtio0": 14, "NMI": 0, "LOC": 4806, "ERR": 0, "MIS": 0}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s: got %d, want %d (all: %v)", k, m[k], v, m)
		}
	}
	if len(m) != len(want) {
		t.Errorf("got %v, want %v", m, want)
	}
	if _, err := parseInterrupts(nil); err == nil {
		t.Error("empty input: want an error")
	}
}

func TestProfileDelta(t *testing.T) {
	before := guestSnapshot{irqs: map[string]uint64{"LOC": 100, "4 ttyS0": 5}, agent: 10, sched: true}
	after := guestSnapshot{irqs: map[string]uint64{"LOC": 130, "4 ttyS0": 5, "49 virtio0": 2}, agent: 25, sched: true}
	got := profileDelta(before, after)
	want := "interrupts LOC 30, 49 virtio0 2, agent threads ran 15 times"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// A kernel without schedstat (cabin's minimal one): said so.
	before.sched, after.sched = false, false
	if got := profileDelta(before, after); !strings.HasSuffix(got, "runs unknown (no schedstat in this kernel)") {
		t.Errorf("without schedstat: %q", got)
	}
}

// TestBareInitrd writes the bare guest's initramfs with a stand-in for
// busybox and reads it back.
func TestBareInitrd(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "bare.cpio")
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	w := &newc{w: bufio.NewWriter(f)}
	w.dir("bin")
	w.file("bin/busybox", 0o755, []byte("odd"))
	w.symlink("bin/sh", "busybox")
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("init", 0o755, []byte(bareInit))
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4 != 0 || !bytes.HasPrefix(b, []byte("070701")) || !bytes.Contains(b, []byte("TRAILER!!!")) {
		t.Fatalf("not a newc archive: %q", b[:min(len(b), 120)])
	}
	// Read it back: each entry's name, mode and body, as the kernel's
	// unpacker does.
	got := map[string]string{}
	for off := 0; ; {
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no header at %d", off)
		}
		field := func(i int) int {
			n, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off = (off + 110 + namesize + 3) &^ 3
		if name == "TRAILER!!!" {
			break
		}
		got[name] = fmt.Sprintf("%o %s", mode, b[off:off+size])
		off = (off + size + 3) &^ 3
	}
	want := map[string]string{
		"bin": "40755 ", "bin/busybox": "100755 odd", "bin/sh": "120777 busybox",
		"dev/console": "20600 ", "init": "100755 " + bareInit,
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzParseStatCPU(f *testing.F) {
	f.Add([]byte("4242 (qemu) S 1 4241 4241 0 -1 4194624 1000 0 0 0 1234 567 0 0 20 0 4 0 100 0 0"))
	f.Add([]byte("1 ()) R"))
	f.Fuzz(func(t *testing.T, b []byte) { parseStatCPU(b) })
}

func FuzzParseInterrupts(f *testing.F) {
	f.Add([]byte(interrupts))
	f.Add([]byte("CPU0\n1: 2 3 x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseInterrupts(b)
		if err == nil && m == nil {
			t.Fatal("no map and no error")
		}
	})
}

func FuzzParseSchedstatRuns(f *testing.F) {
	f.Add([]byte("1 2 3\n"))
	f.Fuzz(func(t *testing.T, b []byte) { parseSchedstatRuns(b) })
}
