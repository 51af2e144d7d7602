package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// TestDiskLifecycle drives a disk image through cabind and the CLI:
// create, fill, export with digest, destroy, import, list; the imported
// image holds the same bytes (digest equal), its holes stayed holes, and
// nothing is left of the operations. Writing the image from inside a VM
// and booting from it need the VM start's disks (attach), which is not
// there yet.
func TestDiskLifecycle(t *testing.T) {
	e := needEnv(t)
	ctx := testContext(t, 3*time.Minute)
	cc := concierge.NewVmConciergeClient(e.cc)
	const name = "cit-disk"
	t.Cleanup(func() {
		cc.DestroyDiskImage(testContext(t, time.Minute), &concierge.DestroyDiskImageRequest{VmName: name})
	})

	// Progress must show on the events stream.
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()

	created, err := cc.CreateDiskImage(ctx, &concierge.CreateDiskImageRequest{
		VmName: name, DiskSize: 256 << 20, ImageType: concierge.DiskImageType_DISK_IMAGE_RAW,
		AllocationType: concierge.DiskImageAllocationType_DISK_ALLOCATION_TYPE_SPARSE,
		FilesystemType: concierge.FilesystemType_EXT4,
	})
	if err != nil || created.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_CREATED {
		t.Fatalf("CreateDiskImage = %v, %v", created, err)
	}
	// What a guest would write: data at two places, a hole between.
	f, err := os.OpenFile(created.GetDiskPath(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	rand.Read(data)
	f.WriteAt(data, 64<<20)
	f.WriteAt(data[:1<<20], 200<<20)
	f.Close()
	want := fileSHA256(t, created.GetDiskPath())

	dir := t.TempDir()
	exported := filepath.Join(dir, "exported.img")
	r := cabinCLI(t, e, "disk", "export", name, exported, "--digest")
	if r.code != 0 {
		t.Fatalf("cabin disk export: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "sha256 "+want) {
		t.Errorf("export's digest: %q, want %s", r.stdout, want)
	}
	if got := fileSHA256(t, exported); got != want {
		t.Errorf("exported file's digest %s, want %s", got, want)
	}
	if a := allocatedBytes(t, exported); a > 64<<20 {
		t.Errorf("the exported file allocates %d bytes: holes were filled", a)
	}
	if _, err := w.next(10*time.Second, func(ev *cabinv1.Event) bool {
		p := ev.GetDiskImageProgress()
		return p != nil && p.GetStatus() == concierge.DiskImageStatus_DISK_STATUS_CREATED
	}); err != nil {
		t.Errorf("no DiskImageProgress event of the export's end: %v (%s)", err, w.summary())
	}

	destroyed, err := cc.DestroyDiskImage(ctx, &concierge.DestroyDiskImageRequest{VmName: name})
	if err != nil || destroyed.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_DESTROYED {
		t.Fatalf("DestroyDiskImage = %v, %v", destroyed, err)
	}
	if l := listDisks(t, e, name); len(l) != 0 {
		t.Fatalf("listed after destroy: %v", l)
	}

	r = cabinCLI(t, e, "disk", "import", name, exported, "--format", "raw", "--digest")
	if r.code != 0 {
		t.Fatalf("cabin disk import: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "sha256 "+want) {
		t.Errorf("import's digest: %q, want %s", r.stdout, want)
	}
	l := listDisks(t, e, name)
	if len(l) != 1 || l[0].GetSize() != 256<<20 || l[0].GetImageType() != concierge.DiskImageType_DISK_IMAGE_RAW || l[0].GetMinSize() == 0 {
		t.Fatalf("ListVmDisks after import = %v", l)
	}
	if got := fileSHA256(t, l[0].GetPath()); got != want {
		t.Errorf("imported image's digest %s, want %s", got, want)
	}
	// And out again through a path cabind writes itself.
	again := filepath.Join(dir, "again.img")
	r = cabinCLI(t, e, "disk", "export", name, again, "--on-host", "--digest")
	if r.code != 0 || !strings.Contains(r.stdout, "sha256 "+want) {
		t.Errorf("cabin disk export --on-host: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Nothing of the operations is left in the state dir.
	filepath.WalkDir(filepath.Join(e.stateDir, "disks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".") {
			t.Errorf("left in the state dir: %s", p)
		}
		return nil
	})
	r = cabinCLI(t, e, "disk", "list", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"name": "`+name+`"`) {
		t.Errorf("cabin disk list --json: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestDiskOpBlocksStart: a VM whose image is under an operation does not
// start, with concierge's VM_STATUS_DISK_OP_IN_PROGRESS.
func TestDiskOpBlocksStart(t *testing.T) {
	e := needEnv(t)
	ctx := testContext(t, 2*time.Minute)
	cc := concierge.NewVmConciergeClient(e.cc)
	const name = "cit-diskbusy"
	t.Cleanup(func() {
		cc.DestroyDiskImage(testContext(t, time.Minute), &concierge.DestroyDiskImageRequest{VmName: name})
	})
	created, err := cc.CreateDiskImage(ctx, &concierge.CreateDiskImageRequest{
		VmName: name, DiskSize: 512 << 20, AllocationType: concierge.DiskImageAllocationType_DISK_ALLOCATION_TYPE_SPARSE,
	})
	if err != nil || created.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_CREATED {
		t.Fatalf("CreateDiskImage = %v, %v", created, err)
	}
	f, _ := os.OpenFile(created.GetDiskPath(), os.O_WRONLY, 0)
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	for off := int64(0); off < 256<<20; off += 1 << 20 {
		f.WriteAt(buf, off)
	}
	f.Close()
	// A streamed export the test reads slowly holds the image.
	stream, err := cabinv1.NewDisksClient(e.cc).Export(ctx, &cabinv1.ExportDiskRequest{
		Request: &concierge.ExportDiskImageRequest{VmName: name},
	})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetStarted().GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
		t.Fatalf("export's first reply = %v, %v", first, err)
	}
	resp, err := cc.StartVm(ctx, &concierge.StartVmRequest{Name: name, Cpus: 1})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSuccess() || resp.GetStatus() != concierge.VmStatus_VM_STATUS_DISK_OP_IN_PROGRESS {
		stopVM(t, e, name)
		t.Fatalf("StartVm under an export = %v", resp)
	}
	// The client going away cancels the export, which frees the image.
	st, err := cc.DiskImageStatus(ctx, &concierge.DiskImageStatusRequest{CommandUuid: first.GetStarted().GetCommandUuid()})
	if err != nil || st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
		t.Fatalf("DiskImageStatus = %v, %v", st, err)
	}
	cancelled, err := cc.CancelDiskImageOperation(ctx, &concierge.CancelDiskImageRequest{CommandUuid: st.GetCommandUuid()})
	if err != nil || !cancelled.GetSuccess() {
		t.Fatalf("CancelDiskImageOperation = %v, %v", cancelled, err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	st, _ = cc.DiskImageStatus(ctx, &concierge.DiskImageStatusRequest{CommandUuid: st.GetCommandUuid()})
	if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_FAILED || st.GetFailureReason() != "cancelled" {
		t.Errorf("status after cancel = %v", st)
	}
}

func listDisks(t *testing.T, e *env, name string) []*concierge.VmDiskInfo {
	t.Helper()
	resp, err := concierge.NewVmConciergeClient(e.cc).ListVmDisks(testContext(t, time.Minute),
		&concierge.ListVmDisksRequest{AllLocations: true, VmName: name})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("ListVmDisks = %v, %v", resp, err)
	}
	return resp.GetImages()
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}
