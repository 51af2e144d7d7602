package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// Fields 3..52 of a real line; field 22 (start time) is 98765.
	rest := "S 1 10415 10415 0 -1 4194624 3095 0 0 0 11 4 0 0 20 0 3 0 98765 1234 567 " +
		"18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0"
	for _, comm := range []string{"qemu-system-x86", "a b", "x) S 1 2 (y", ")", "(("} {
		st, err := parseProcStat([]byte("10416 (" + comm + ") " + rest + "\n"))
		if err != nil {
			t.Errorf("comm %q: %v", comm, err)
			continue
		}
		if st.State != 'S' || st.StartTime != 98765 {
			t.Errorf("comm %q: got %+v, want state S, start 98765", comm, st)
		}
	}
	for _, bad := range []string{"", "10416 qemu S 1", "10416 (qemu) S 1 2 3", "10416 (qemu) " + strings.Replace(rest, "98765", "x", 1)} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestReadProcStatSelf(t *testing.T) {
	st, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.StartTime == 0 || st.State == 'Z' {
		t.Errorf("own stat %+v", st)
	}
}

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]int{"10416\n": 10416, "7": 7, "": 0, "x\n": 0, "-3\n": 0} {
		p := filepath.Join(dir, "pid")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readPIDFile(p)
		if want == 0 {
			if err == nil {
				t.Errorf("pidfile %q: got %d, want error", content, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("pidfile %q: got %d, %v; want %d", content, got, err, want)
		}
	}
}

// The test binary is not QEMU, whatever its arguments.
func TestIsQEMUForOtherProcess(t *testing.T) {
	ok, err := isQEMUFor(os.Getpid(), "/x/qemu.pid")
	if err != nil || ok {
		t.Errorf("isQEMUFor(self) = %v, %v", ok, err)
	}
}
