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
	stream, err := cabinv1.NewImagesClient(e.cc).Build(ctx, &cabinv1.BuildImageRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var img *cabinv1.ImageInfo
	for img == nil {
		p, err := stream.Recv()
		if err != nil {
			t.Fatalf("image build: %v", err)
		}
		img = p.GetImage()
	}
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

	// QEMU booted the caller's files...
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(int(resp.GetVmInfo().GetPid())) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	if !containsPair(args, "-kernel", kernel) || !containsPair(args, "-initrd", initrd) {
		t.Errorf("QEMU does not boot the given files: %q", args)
	}
	// ...and the guest works.
	if out := mustExec(t, e, name, "uname", "-r"); !strings.HasPrefix(out, "6.") {
		t.Errorf("uname -r in the guest: %q", out)
	}
}

func containsPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
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
