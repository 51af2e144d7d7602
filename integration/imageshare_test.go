package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// TestImageShare: the agent mounts the guest image's share itself, once,
// read-only, and what boot does not need is found there by its usual
// paths: cabin-runtime, the programs and their libraries, zoneinfo, the
// late modules.
func TestImageShare(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	mounts := mustExec(t, e, vm, "cat", "/proc/mounts")
	var found []string
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == bootcfg.RootfsTag && f[1] == bootcfg.RootfsMount {
			found = append(found, line)
			if f[2] != "9p" || !strings.HasPrefix(f[3], "ro,") {
				t.Errorf("the share is mounted %q; want 9p, read-only", line)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("the share on %s: %q in\n%s", bootcfg.RootfsMount, found, mounts)
	}
	if got := strings.TrimSpace(mustExec(t, e, vm, "readlink", bootcfg.RuntimeBinary)); got != bootcfg.SystemPath(bootcfg.RuntimeBinary) {
		t.Errorf("%s links to %q, want the share's copy", bootcfg.RuntimeBinary, got)
	}
	// The runtime runs from the share, iptables with its loader and
	// libraries, mke2fs too; the zones are there.
	if out := mustExec(t, e, vm, bootcfg.RuntimeBinary, "features"); !strings.HasPrefix(strings.TrimSpace(out), "{") {
		t.Errorf("cabin-runtime features: %q", out)
	}
	mustExec(t, e, vm, "iptables-save", "-t", "filter")
	if out := mustExec(t, e, vm, "sh", "-c", "/sbin/mke2fs -V 2>&1"); !strings.Contains(out, "e2fsprogs") && !strings.Contains(out, "EXT2FS") {
		t.Errorf("mke2fs -V: %q", out)
	}
	mustExec(t, e, vm, "test", "-f", "/usr/share/zoneinfo/Europe/Paris")
	// The share is not writable, even by root.
	if res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm, "touch", bootcfg.SystemRoot+"/x"); err != nil || res.code == 0 {
		t.Errorf("touch in the share: %v %+v; want refused", err, res)
	}
	// What the initramfs holds of it: links, in a tmpfs; the files are
	// the share's.
	if out := mustExec(t, e, vm, "sh", "-c", "ls -l /usr/bin/ /sbin/mke2fs"); strings.Contains(out, "-rwx") {
		t.Errorf("a moved file is a copy in the guest's root:\n%s", out)
	}
}

// TestNoImageShare: a guest whose kernel cannot mount the share (no 9p:
// the image's initramfs with an archive after it that empties the list
// of modules 9p needs) still boots and answers, and a container, a time
// zone or iptables it cannot have are refused saying why.
func TestNoImageShare(t *testing.T) {
	e := needEnv(t)
	kernel, initrd := imageFiles(t, e)
	if !initrdHasModules(t, initrd) {
		t.Skip("the guest kernel has 9p built in (cabin's minimal kernel): nothing to take away; run with CABIN_TEST_KERNEL=generic")
	}
	f, err := os.OpenFile(initrd, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(append(newcEntry(strings.TrimPrefix(bootcfg.ShareModules, "/"), 0o100644, ""), newcEntry("TRAILER!!!", 0, "")...))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	const name = "cit-noshare"
	t.Cleanup(func() { stopVM(t, e, name) })
	if res := cabinCLI(t, e, "vm", "start", name, "--kernel", kernel, "--initrd", initrd); res.code != 0 {
		t.Fatalf("cabin vm start: %v", res)
	}
	// It answers.
	if out := mustExec(t, e, name, "echo", "alive"); out != "alive\n" {
		t.Errorf("exec: %q", out)
	}
	// A container cannot start, and the caller is told why.
	res := cabinCLI(t, e, "run", "--vm", name, "--rm", "busybox", "true")
	if res.code == 0 || !strings.Contains(res.stderr, "guest image's share") || !strings.Contains(res.stderr, "9p") {
		t.Errorf("cabin run without the share: %v; want refused naming the share and 9p", res)
	}
	ctx := toVM(testContext(t, 30*time.Second), name)
	_, err = vmtools.NewMaitredClient(e.cc).SetTimezone(ctx, &vmtools.SetTimezoneRequest{TimezoneName: "Europe/Paris"})
	wantCode(t, err, codes.FailedPrecondition, "zoneinfo", "guest image's share")
	// And it still answers after the refusals.
	if out := mustExec(t, e, name, "echo", "still"); out != "still\n" {
		t.Errorf("exec after the refusals: %q", out)
	}
}

// imageFiles copies the image's kernel and initramfs for a VM of the
// test's own.
func imageFiles(t *testing.T, e *env) (kernel, initrd string) {
	t.Helper()
	img := builtImage(t, e)
	k, i := img.GetKernelPath(), img.GetInitrdPath()
	dir, err := os.MkdirTemp(e.dir, "share")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel, initrd = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	copyFile(t, k, kernel)
	copyFile(t, i, initrd)
	return kernel, initrd
}

// initrdHasModules reports whether the initramfs lists modules for 9p.
func initrdHasModules(t *testing.T, initrd string) bool {
	t.Helper()
	data, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), "kernel/fs/9p/9p.ko")
}
