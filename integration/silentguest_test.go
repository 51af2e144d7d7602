package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// silentGuest returns a kernel and an initramfs whose guest boots but never
// reports to cabind, however fast the kernel: the image's initramfs with a
// second archive after it that makes /init a shell, which waits on the
// console for ever. The kernel unpacks the archives in order, so the later
// /init wins.
func silentGuest(t *testing.T, e *env) (kernel, initrd string) {
	t.Helper()
	img := builtImage(t, e)
	// Not t.TempDir(): a subtest's name has commas, which cabind refuses
	// in a path it hands QEMU.
	dir, err := os.MkdirTemp(e.dir, "silent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel, initrd = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	copyFile(t, img.GetKernelPath(), kernel)
	copyFile(t, img.GetInitrdPath(), initrd)
	f, err := os.OpenFile(initrd, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(newcEntry("init", 0o120777, "bin/sh"), newcEntry("TRAILER!!!", 0, "")...)); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

// newcEntry is one entry of a newc cpio archive (the kernel's initramfs
// format): header, name and body, each padded to 4 bytes.
func newcEntry(name string, mode uint32, body string) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	b := fmt.Appendf(nil, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name)+1, 0)
	b = pad(append(append(b, name...), 0))
	return pad(append(b, body...))
}

// builtImage is the guest image cabind builds (or has), through Build.
func builtImage(t *testing.T, e *env) *cabinv1.ImageInfo {
	t.Helper()
	stream, err := cabinv1.NewImagesClient(e.cc).Build(context.Background(), &cabinv1.BuildImageRequest{})
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
	return img
}
