// Package storagetest makes disks for the stateful disk's tests: sparse
// files behind loop devices, gone when the test ends. For tests only.
package storagetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// NeedDisks skips t unless it can make loop devices and has e2fsprogs.
func NeedDisks(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, e2fsprogs): %v", tool, err)
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices here: %v", err)
	}
}

// LoopDisk makes a sparse file of size bytes and a loop device on it,
// both gone when t ends; fill, if not nil, writes to the file first.
func LoopDisk(t testing.TB, size int64, fill func(f *os.File)) (dev, file string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if fill != nil {
		fill(f)
	}
	f.Close()
	dev = strings.TrimSpace(Run(t, "losetup", "--find", "--show", file))
	// Registered after TempDir's, so it runs before the file goes.
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, file
}

// GrowLoop grows the loop device's file to size and has the kernel see
// the new size, as a host growing a VM's disk does.
func GrowLoop(t testing.TB, dev, file string, size int64) {
	t.Helper()
	if err := os.Truncate(file, size); err != nil {
		t.Fatal(err)
	}
	Run(t, "losetup", "-c", dev)
}

// Run runs argv and fails t unless it succeeds; it returns the output.
func Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%q: %v: %s", argv, err, out)
	}
	return string(out)
}

// HasCap tells whether this process has the capability c in effect.
func HasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<c) != 0
		}
	}
	return false
}
