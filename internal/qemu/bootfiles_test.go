package qemu

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/qemu/qemutest"
)

const testMaps = `55b994d37000-55b99578a000 rw-p 00000000 00:00 0                          [heap]
7f586be00000-7f586fcdb000 rw-p 00000000 fe:00 10160167                   /var/lib/cabin/image/kernel/6.1/vmlinux
7f5885a00000-7f58877ec000 r--p 00000000 fe:00 10160170                   /var/lib/cabin/image/initramfs/a b.cpio
7f5885000000-7f5885001000 r--p 00000000 fe:01 10160170                   /other/device/same/inode
7f5888000000-7f58c7fff000 rwxp 00000000 00:00 0
7f58c8000000-7f58c8100000 r-xp 00000000 08:01 99                         /usr/bin/qemu-system-x86_64
garbage line
7f58c9000000-7f58c8000000 r--p 00000000 fe:00 10160167                   /backwards
`

func TestFileMappings(t *testing.T) {
	ids := map[fileID]bool{
		{dev: unix.Mkdev(0xfe, 0), ino: 10160167}: true,
		{dev: unix.Mkdev(0xfe, 0), ino: 10160170}: true,
	}
	got := fileMappings([]byte(testMaps), ids)
	want := []span{{0x7f586be00000, 0x7f586fcdb000}, {0x7f5885a00000, 0x7f58877ec000}}
	if !slices.Equal(got, want) {
		t.Errorf("mappings %x, want %x", got, want)
	}
	if got := fileMappings([]byte(testMaps), map[fileID]bool{}); len(got) != 0 {
		t.Errorf("no files, mappings %x", got)
	}
}

// FuzzFileMappings feeds the maps parser arbitrary text: it never panics,
// and every span it returns is a non-empty range.
func FuzzFileMappings(f *testing.F) {
	f.Add([]byte(testMaps))
	f.Add([]byte("0-1 r--p 0 0:0 1 /x\n"))
	f.Add([]byte("ffffffffffffffff-0 r 0 ff:ff 18446744073709551615 x"))
	ids := map[fileID]bool{{dev: unix.Mkdev(0xfe, 0), ino: 10160167}: true, {dev: 0, ino: 1}: true}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, s := range fileMappings(b, ids) {
			if s.end <= s.start {
				t.Fatalf("span %x from %q", s, b)
			}
		}
	})
}

// mappingRss sums the Rss of pid's mappings of path, in bytes.
func mappingRss(t *testing.T, pid int, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	in := false
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		line := s.Text()
		if f := strings.Fields(line); len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = len(f) >= 6 && f[5] == path
			continue
		}
		if rest, ok := strings.CutPrefix(line, "Rss:"); ok && in {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			total += kb << 10
		}
	}
	return total
}

// A real QEMU keeps its initramfs mapped and resident; released, the
// pages are gone from it, and the VM runs on.
func TestReleaseBootFiles(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	if os.Getuid() != 0 {
		t.Skip("process_madvise of another user's process needs root (CAP_SYS_NICE and ptrace access)")
	}
	dir := vmDir(t)
	cfg := haltConfig(t, dir)
	initrd := filepath.Join(dir.Path(), "initrd")
	data := make([]byte, 8<<20)
	rand.Read(data)
	if err := os.WriteFile(initrd, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Initrd = initrd
	v := launch(t, testLauncher(t), cfg)
	// The guest's boot ROM reads the initramfs through fw_cfg once its
	// vCPU runs.
	if err := v.Resume(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// All of it: a release while the ROM still reads would see the rest
	// faulted in after it.
	var before int64
	for deadline := time.Now().Add(20 * time.Second); before < 8<<20; {
		if time.Now().After(deadline) {
			t.Fatalf("qemu holds %d bytes of its initramfs: no mapping to release?", before)
		}
		time.Sleep(20 * time.Millisecond)
		before = mappingRss(t, v.PID(), initrd)
	}
	n, err := v.ReleaseBootFiles(initrd, "", filepath.Join(dir.Path(), "missing"))
	if err != nil {
		t.Fatal(err)
	}
	if n < 8<<20 {
		t.Errorf("advised %d bytes of mappings, want the 8 MiB initramfs", n)
	}
	if after := mappingRss(t, v.PID(), initrd); after > before/4 {
		t.Errorf("qemu holds %d bytes of its initramfs after the release, %d before", after, before)
	}
	if st := queryStatus(t, v); st != "prelaunch" && st != "paused" && st != "running" {
		t.Errorf("status %q after the release", st)
	}
	if n, err := v.ReleaseBootFiles(); err != nil || n != 0 {
		t.Errorf("no files: %d, %v", n, err)
	}
}
