package integration

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// TestUserSuppliedKernel boots a VM from a kernel and initramfs at paths
// of the caller's own, not cabin's image cache.
func TestUserSuppliedKernel(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	ctx := testContext(t, bootTimeout+60*time.Second)

	// The caller's files: copies of the built image, elsewhere.
	img := builtImage(t, e)
	userDir := filepath.Join(e.dir, "user")
	if err := os.MkdirAll(userDir, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(userDir, "my-vmlinux")
	initrd := filepath.Join(userDir, "my-initrd")
	copyFile(t, img.GetKernelPath(), kernel)
	copyFile(t, img.GetInitrdPath(), initrd)

	const name = "cit-userkernel"
	t.Cleanup(func() { stopVM(t, e, name) })
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	resp, err := cabinv1.NewVmsClient(e.cc).StartVm(ctx, &cabinv1.StartVmRequest{
		Request:    &concierge.StartVmRequest{Name: name, Cpus: 1},
		MemoryMib:  256,
		KernelPath: kernel,
		InitrdPath: initrd,
	})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("StartVm: %v, %v", resp, err)
	}
	ev, err := w.next(bootTimeout, func(ev *cabinv1.Event) bool {
		return ev.GetVmStarted() != nil || ev.GetVmStopped() != nil
	})
	if err != nil || ev.GetVmStarted() == nil {
		t.Fatalf("boot: %v, %v", ev, err)
	}
	if got := ev.GetVmStarted().GetVmInfo().GetAllocatedMemory(); got != 256<<20 {
		t.Errorf("allocated memory %d, want 256 MiB", got)
	}

	// QEMU booted the caller's files, which cabind opened for it after
	// checking the caller may read them: QEMU reads them as inherited
	// descriptors (/proc/self/fd/N), never by their paths, which the caller
	// could change after the check.
	proc := "/proc/" + strconv.Itoa(int(resp.GetVmInfo().GetPid()))
	cmdline, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	for flag, want := range map[string]string{"-kernel": kernel, "-initrd": initrd} {
		fd, ok := strings.CutPrefix(valueAfter(args, flag), "/proc/self/fd/")
		if !ok {
			t.Errorf("QEMU given %s %q, want an open file (/proc/self/fd/N): %q", flag, valueAfter(args, flag), args)
			continue
		}
		if got, err := os.Readlink(proc + "/fd/" + fd); err != nil || got != want {
			t.Errorf("QEMU's %s is %q (%v), want %q", flag, got, err, want)
		}
	}
	// ...and the guest works.
	if out := mustExec(t, e, name, "uname", "-r"); !strings.HasPrefix(out, "6.") {
		t.Errorf("uname -r in the guest: %q", out)
	}
}

// valueAfter is the argument that follows flag in args, "" if none.
func valueAfter(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
