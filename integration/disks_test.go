package integration

import (
	"context"
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

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// start, with concierge's VM_STATUS_DISK_OP_IN_PROGRESS. The operation is
// a streamed export whose client stops reading, so that cabind's Send
// blocks on flow control: CancelDiskImageOperation must still end it at
// once and free the image, and the VM then starts.
func TestDiskOpBlocksStart(t *testing.T) {
	e := needEnv(t)
	ctx := testContext(t, 3*time.Minute)
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
	// 256 MiB of data: far more than the flow-control windows hold.
	f, _ := os.OpenFile(created.GetDiskPath(), os.O_WRONLY, 0)
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	for off := int64(0); off < 256<<20; off += 1 << 20 {
		f.WriteAt(buf, off)
	}
	f.Close()
	// A streamed export of which the test reads up to the first chunk
	// (the export is sending), then nothing until the cancel returned.
	streamCtx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	stream, err := cabinv1.NewDisksClient(e.cc).Export(streamCtx, &cabinv1.ExportDiskRequest{
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
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("export before its first chunk: %v", err)
		}
		if r.GetChunk() != nil {
			break
		}
	}
	uuid := first.GetStarted().GetCommandUuid()
	stalled := waitExportStalled(t, ctx, cc, uuid)
	cancelled, err := cc.CancelDiskImageOperation(ctx, &concierge.CancelDiskImageRequest{CommandUuid: uuid})
	if err != nil || !cancelled.GetSuccess() {
		t.Fatalf("CancelDiskImageOperation with the client not reading = %v, %v", cancelled, err)
	}
	st, err := cc.DiskImageStatus(ctx, &concierge.DiskImageStatusRequest{CommandUuid: uuid})
	if err != nil || st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_FAILED || st.GetFailureReason() != "cancelled" {
		t.Errorf("status after cancel = %v, %v", st, err)
	}
	// The image is free, the stalled client still connected: its VM
	// starts.
	bootOwnVM(t, e, name)
	// Only now does the client read: what was in flight, then the end.
	var done *concierge.DiskImageStatusResponse
	for {
		r, err := stream.Recv()
		if err != nil {
			if stalled && status.Code(err) != codes.Canceled {
				t.Errorf("the stalled export's stream ended with %v, want Canceled", err)
			}
			break
		}
		if r.GetDone() != nil {
			done = r.GetDone().GetStatus()
		}
	}
	if stalled && done != nil {
		t.Errorf("a stalled export told its outcome: %v", done)
	}
}

// waitExportStalled waits until the export uuid, sending to a client that
// reads nothing, has stopped advancing: cabind's Send waits on flow
// control. It tells whether it saw that (a progress unchanged for two
// seconds, which a blocked export keeps for ever); an export that ends
// first is an error.
func waitExportStalled(t *testing.T, ctx context.Context, cc concierge.VmConciergeClient, uuid string) bool {
	t.Helper()
	last, same := uint32(0), 0
	for range 600 {
		st, err := cc.DiskImageStatus(ctx, &concierge.DiskImageStatusRequest{CommandUuid: uuid})
		if err != nil || st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
			t.Fatalf("DiskImageStatus of an export the client does not read = %v, %v", st, err)
		}
		if p := st.GetProgress(); p == last {
			if same++; same == 20 {
				t.Logf("the export stalled at %d%%", p)
				return true
			}
		} else {
			last, same = p, 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the export of %s kept advancing for a minute without a reader", uuid)
	return false
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
