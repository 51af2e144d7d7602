package cabinv1

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/statedir"
)

func disksClient(t *testing.T) (pb.DisksClient, *diskimage.Store, statedir.Root) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skipf("needs qemu-img: %v", err)
	}
	root, err := statedir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := diskimage.New(diskimage.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterDisksServer(s, NewDisks(d)) }, grpctest.UIDs()...)
	return pb.NewDisksClient(cc), d, root
}

// temporaries lists what is left under a temporary name.
func temporaries(root statedir.Root) []string {
	var out []string
	filepath.WalkDir(root.DisksDir(), func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), ".") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func waitIdle(t *testing.T, d *diskimage.Store, key diskimage.Key) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); d.Busy(key); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the operation did not end")
		}
	}
}

func TestExportClientGoesAway(t *testing.T) {
	c, d, root := disksClient(t)
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	res, err := d.Create(t.Context(), diskimage.CreateRequest{Key: key, Format: diskimage.FormatRaw, Size: 64 << 20, Allocation: diskimage.AllocSparse})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(res.Path, os.O_WRONLY, 0)
	b := make([]byte, 32<<20)
	rand.Read(b)
	f.WriteAt(b, 0)
	f.Close()
	ctx, cancel := context.WithCancel(grpctest.AsUID(1000))
	stream, err := c.Export(ctx, &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetStarted().GetCommandUuid() == "" {
		t.Fatalf("first reply %v, %v", first, err)
	}
	stream.Recv() // the header
	stream.Recv() // a chunk
	cancel()
	waitIdle(t, d, key)
	op, err := d.Lookup(first.GetStarted().GetCommandUuid(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := op.Progress(); p.Status != diskimage.StatusFailed {
		t.Errorf("export after its client went = %+v", p)
	}
	if l := temporaries(root); len(l) > 0 {
		t.Errorf("left: %v", l)
	}
}

func TestImportClientGoesAway(t *testing.T) {
	c, d, root := disksClient(t)
	ctx, cancel := context.WithCancel(grpctest.AsUID(1000))
	stream, err := c.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Header{Header: &pb.ImportDiskHeader{
		Request: &conciergepb.ImportDiskImageRequest{VmName: "dev"}, Format: pb.DiskFormat_DISK_FORMAT_RAW,
		Size: 64 << 20, DataBytes: 8 << 20,
	}}})
	b := make([]byte, 1<<20)
	rand.Read(b)
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 0, Data: b}}})
	first, err := stream.Recv()
	if err != nil || first.GetStarted().GetCommandUuid() == "" {
		t.Fatalf("first reply %v, %v", first, err)
	}
	cancel()
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	waitIdle(t, d, key)
	if l := temporaries(root); len(l) > 0 {
		t.Errorf("left: %v", l)
	}
	if l, _ := d.List(t.Context(), key.Owner, nil, ""); len(l.Images) != 0 {
		t.Errorf("listed: %+v", l.Images)
	}
}

func TestImportStreamRoundTrip(t *testing.T) {
	c, _, _ := disksClient(t)
	ctx := grpctest.AsUID(1000)
	stream, err := c.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1<<20)
	rand.Read(b)
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Header{Header: &pb.ImportDiskHeader{
		Request: &conciergepb.ImportDiskImageRequest{VmName: "dev"}, Format: pb.DiskFormat_DISK_FORMAT_RAW,
		Size: 16 << 20, DataBytes: 1 << 20, Sha256: true,
	}}})
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 4 << 20, Data: b}}})
	stream.CloseSend()
	var done *pb.DiskOutcome
	for {
		r, err := stream.Recv()
		if err != nil {
			break
		}
		if r.GetDone() != nil {
			done = r.GetDone()
		}
	}
	if done.GetStatus().GetStatus() != conciergepb.DiskImageStatus_DISK_STATUS_CREATED || len(done.GetSha256()) != 64 {
		t.Fatalf("import ended %v", done)
	}
	// Exported again, the same digest; another user does not find it.
	ex, err := c.Export(ctx, &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: "dev", GenerateSha256Digest: true}})
	if err != nil {
		t.Fatal(err)
	}
	var out *pb.DiskOutcome
	for {
		r, err := ex.Recv()
		if err != nil {
			break
		}
		if r.GetDone() != nil {
			out = r.GetDone()
		}
	}
	if out.GetSha256() != done.GetSha256() {
		t.Errorf("export's digest %s, import's %s", out.GetSha256(), done.GetSha256())
	}
	other, err := c.Export(grpctest.AsUID(1001), &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := other.Recv()
	if err != nil || r.GetStarted().GetStatus() != conciergepb.DiskImageStatus_DISK_STATUS_DOES_NOT_EXIST {
		t.Errorf("another user's export = %v, %v", r, err)
	}
}
