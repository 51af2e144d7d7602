package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/ociimage"
)

// TestOciImageBlockDeviceInGuest: an image imported from a `docker save`
// tarball (two layers, a whiteout, owners and a setuid bit) becomes a
// read-only ext4 block image that two VMs at once mount as a disk and
// read the same flattened tree from, owners and modes kept; neither can
// write to it. One VM's QEMU killed with SIGKILL leaves the other reading
// and the image unchanged.
func TestOciImageBlockDeviceInGuest(t *testing.T) {
	e := needEnv(t)
	ctx := testContext(t, 10*time.Minute)
	layer := func(hdrs ...*tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hdrs {
			body := h.Linkname
			if h.Typeflag == tar.TypeReg {
				h.Size = int64(len(body))
				h.Linkname = ""
			}
			tw.WriteHeader(h)
			io.WriteString(tw, body)
		}
		tw.Close()
		return buf.Bytes()
	}
	// Linkname carries a regular file's body, to keep the table short.
	l1 := layer(
		&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Linkname: "hello from an OCI image\n"},
		&tar.Header{Name: "etc/gone", Typeflag: tar.TypeReg, Mode: 0o644, Linkname: "x"},
		&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Linkname: "su"},
	)
	l2 := layer(
		&tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg},
		&tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "home/u/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000},
		&tar.Header{Name: "home/u/notes", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000, Linkname: "mine"},
		&tar.Header{Name: "motd", Typeflag: tar.TypeSymlink, Linkname: "/etc/motd"},
	)
	img := empty.Image
	for _, b := range [][]byte{l1, l2} {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	img, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	var saved bytes.Buffer
	tag, _ := name.NewTag("example.com/cit/oci:v1")
	if err := tarball.Write(tag, img, &saved); err != nil {
		t.Fatal(err)
	}

	store, err := ociimage.Open(ctx, filepath.Join(t.TempDir(), "oci"), ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.ImportReader(ctx, &saved, ociimage.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	block, err := store.BlockImage(ctx, "example.com/cit/oci:v1")
	if err != nil {
		t.Fatal(err)
	}

	before := fileSHA256(t, block)
	names := []string{"cit-oci-a", "cit-oci-b"}
	for _, n := range names {
		t.Cleanup(func() { stopVM(t, e, n) })
		seed := &concierge.StartVmRequest{
			Name: n, Cpus: 1,
			Disks: []*concierge.DiskImage{{
				Path: block, ImageType: concierge.DiskImageType_DISK_IMAGE_RAW, Writable: false,
				DoMount: true, MountPoint: "/image", Fstype: "ext4", Flags: unix.MS_RDONLY,
			}},
		}
		startVM(t, e, n, func(ctx context.Context) (*concierge.StartVmResponse, error) {
			return cabinv1.NewVmsClient(e.cc).StartVm(ctx, &cabinv1.StartVmRequest{Request: seed})
		})
	}
	for _, n := range names {
		if got := mustExec(t, e, n, "cat", "/image/etc/motd"); got != "hello from an OCI image\n" {
			t.Errorf("%s: /image/etc/motd = %q", n, got)
		}
		if got := strings.TrimSpace(mustExec(t, e, n, "stat", "-c", "%u:%g %a", "/image/home/u/notes", "/image/bin/su", "/image/home/u")); got != "1000:1000 600\n0:0 4755\n1000:1000 700" {
			t.Errorf("%s: owners and modes:\n%s", n, got)
		}
		if got := mustExec(t, e, n, "readlink", "/image/motd"); got != "/etc/motd\n" {
			t.Errorf("%s: /image/motd -> %q", n, got)
		}
		if r, err := execArgs(ctx, e.cc, n, "ls", "/image/etc/gone"); err == nil && r.code == 0 {
			t.Errorf("%s: a whited-out file is in the image", n)
		}
		if r, err := execArgs(ctx, e.cc, n, "touch", "/image/new"); err == nil && r.code == 0 {
			t.Errorf("%s: wrote to the image's read-only disk", n)
		}
		if mounts := mustExec(t, e, n, "cat", "/proc/mounts"); !strings.Contains(mounts, "/image ext4 ro") {
			t.Errorf("%s: /image is not a read-only ext4 mount:\n%s", n, mounts)
		}
	}

	pid := int(vmInfo(t, e, names[0]).GetVmInfo().GetPid())
	if pid <= 0 {
		t.Fatalf("%s has no QEMU pid", names[0])
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(pid, time.Minute) {
		t.Fatalf("QEMU %d outlived SIGKILL", pid)
	}
	if got := mustExec(t, e, names[1], "cat", "/image/etc/motd"); got != "hello from an OCI image\n" {
		t.Errorf("%s after the other VM was killed: %q", names[1], got)
	}
	if after := fileSHA256(t, block); after != before {
		t.Errorf("the block image changed: %s, was %s", after, before)
	}
	if out, err := exec.Command("e2fsck", "-fn", block).CombinedOutput(); err != nil {
		t.Errorf("e2fsck of the block image: %v\n%s", err, out)
	}
}
