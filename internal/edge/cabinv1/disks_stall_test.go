package cabinv1

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/statedir"
)

// stallEnv is a Disks server with a client.
type stallEnv struct {
	c    pb.DisksClient
	d    *diskimage.Store
	root statedir.Root
	// base is the goroutine count once connected.
	base int
}

// stallClient serves Disks with the given stall bound (zero: the
// default), and connects.
func stallClient(t *testing.T, stall time.Duration) stallEnv {
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
	edge := NewDisks(d)
	edge.stall = stall
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterDisksServer(s, edge) }, grpctest.UIDs()...)
	c := pb.NewDisksClient(cc)
	// A call that ends at once connects, so that the count below has the
	// connection's goroutines.
	r, err := exportAll(t, c, "absent")
	if err != nil || r.GetStarted().GetStatus() != conciergepb.DiskImageStatus_DISK_STATUS_DOES_NOT_EXIST {
		t.Fatalf("export of no image = %v, %v", r, err)
	}
	return stallEnv{c: c, d: d, root: root, base: runtime.NumGoroutine()}
}

// exportAll exports name as uid 1000, reading everything, and returns
// the last reply.
func exportAll(t *testing.T, c pb.DisksClient, name string) (*pb.ExportDiskReply, error) {
	t.Helper()
	stream, err := c.Export(grpctest.AsUID(1000), &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: name}})
	if err != nil {
		return nil, err
	}
	var last *pb.ExportDiskReply
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		last = r
	}
}

// bigImage makes an image of 64 MiB with 48 MiB of data: more than gRPC's
// flow-control windows and the in-memory connection's buffer hold.
func bigImage(t *testing.T, d *diskimage.Store, key diskimage.Key) {
	t.Helper()
	res, err := d.Create(t.Context(), diskimage.CreateRequest{Key: key, Format: diskimage.FormatRaw, Size: 64 << 20, Allocation: diskimage.AllocSparse})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(res.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1<<20)
	rand.Read(b)
	for off := int64(0); off < 48<<20; off += 1 << 20 {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

// stacks is every goroutine's stack.
func stacks() string {
	for n := 1 << 20; ; n *= 2 {
		b := make([]byte, n)
		if m := runtime.Stack(b, true); m < n {
			return string(b[:m])
		}
	}
}

// sendBlocked tells whether an export's Send waits for the client's
// flow-control window: the client stopped reading and the window is full.
func sendBlocked() bool {
	for _, g := range strings.Split(stacks(), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && strings.Contains(g, " [select") &&
			strings.Contains(g, "(*streamSink).Write") && strings.Contains(g, "(*writeQuota).get") {
			return true
		}
	}
	return false
}

// waitFor waits until cond holds; the bound only keeps a broken build
// from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: never\n%s", what, stacks())
		}
	}
}

// stalledExport starts exporting key's image and reads only the first
// reply; it returns the stream, its cancel and the operation.
func stalledExport(t *testing.T, c pb.DisksClient, d *diskimage.Store, key diskimage.Key) (pb.Disks_ExportClient, context.CancelFunc, *diskimage.Op) {
	t.Helper()
	ctx, cancel := context.WithCancel(grpctest.AsUID(1000))
	t.Cleanup(cancel)
	stream, err := c.Export(ctx, &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: key.Name}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetStarted().GetCommandUuid() == "" {
		t.Fatalf("first reply %v, %v", first, err)
	}
	op, err := d.Lookup(first.GetStarted().GetCommandUuid(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return stream, cancel, op
}

// drain reads what stream still has and returns how it ended, failing
// on a Done: a stalled export ends the stream with an error.
func drain(t *testing.T, stream pb.Disks_ExportClient) error {
	t.Helper()
	for {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		if r.GetDone() != nil {
			t.Errorf("a stalled export told its outcome: %v", r.GetDone())
		}
	}
}

// leakFree waits until the goroutines are back to base.
func leakFree(t *testing.T, base int) {
	t.Helper()
	waitFor(t, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= base })
}

func TestExportCancelWithClientNotReading(t *testing.T) {
	e := stallClient(t, 0)
	c, d, base := e.c, e.d, e.base
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	bigImage(t, d, key)
	stream, cancel, op := stalledExport(t, c, d, key)
	waitFor(t, "the export's Send blocked on flow control", sendBlocked)

	ctx, done := context.WithTimeout(t.Context(), 30*time.Second)
	defer done()
	if err := op.Cancel(ctx); err != nil {
		t.Fatalf("Cancel with the client not reading = %v", err)
	}
	if p := op.Progress(); p.Status != diskimage.StatusFailed || p.Reason != "cancelled" {
		t.Errorf("cancelled export = %+v", p)
	}
	if d.Busy(key) {
		t.Error("the image is still held")
	}
	// The image is free for another operation, the stalled client still
	// connected.
	if r, err := exportAll(t, c, key.Name); err != nil || r.GetDone().GetStatus().GetStatus() != conciergepb.DiskImageStatus_DISK_STATUS_CREATED {
		t.Fatalf("export after the cancel = %v, %v", r, err)
	}
	if err := drain(t, stream); status.Code(err) != codes.Canceled {
		t.Errorf("the stalled stream ended with %v, want Canceled", err)
	}
	cancel()
	leakFree(t, base)
}

func TestExportClientStallsTooLong(t *testing.T) {
	e := stallClient(t, 200*time.Millisecond)
	c, d, base := e.c, e.d, e.base
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	bigImage(t, d, key)
	stream, cancel, op := stalledExport(t, c, d, key)
	// Nobody cancels: the stall bound ends the export.
	<-op.Done()
	if p := op.Progress(); p.Status != diskimage.StatusFailed || !strings.Contains(p.Reason, "took no data for 200ms") {
		t.Errorf("stalled export = %+v", p)
	}
	if d.Busy(key) {
		t.Error("the image is still held")
	}
	if err := drain(t, stream); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("the stalled stream ended with %v, want DeadlineExceeded", err)
	}
	cancel()
	leakFree(t, base)
	// Cancelling what ended is refused, as for any ended operation.
	if err := op.Cancel(t.Context()); err == nil {
		t.Error("Cancel of an ended export succeeded")
	}
}

// A client reading slowly, but reading, is not cut off by the bound.
func TestExportSlowReaderKeepsExport(t *testing.T) {
	e := stallClient(t, 5*time.Second)
	c, d := e.c, e.d
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	bigImage(t, d, key)
	stream, err := c.Export(grpctest.AsUID(1000), &pb.ExportDiskRequest{Request: &conciergepb.ExportDiskImageRequest{VmName: key.Name}})
	if err != nil {
		t.Fatal(err)
	}
	var done *pb.DiskOutcome
	for n := 0; ; n++ {
		r, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		if r.GetDone() != nil {
			done = r.GetDone()
		}
		if n%8 == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if done.GetStatus().GetStatus() != conciergepb.DiskImageStatus_DISK_STATUS_CREATED {
		t.Errorf("slow export ended %v", done)
	}
}

// recvBlocked tells whether op, an import, waits for the client's next
// chunk: it wrote the one chunk sent (its progress moved) and waits in
// Recv.
func recvBlocked(op *diskimage.Op) bool {
	if op.Progress().Percent == 0 {
		return false
	}
	for _, g := range strings.Split(stacks(), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && strings.Contains(g, " [select") &&
			strings.Contains(g, "(*streamSource).Next") && strings.Contains(g, "RecvMsg") {
			return true
		}
	}
	return false
}

// stalledImport starts an import of name, sends its header and one chunk
// of the 8 MiB it announced, then nothing.
func stalledImport(t *testing.T, c pb.DisksClient, d *diskimage.Store, name string) (pb.Disks_ImportClient, context.CancelFunc, *diskimage.Op) {
	t.Helper()
	ctx, cancel := context.WithCancel(grpctest.AsUID(1000))
	t.Cleanup(cancel)
	stream, err := c.Import(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Header{Header: &pb.ImportDiskHeader{
		Request: &conciergepb.ImportDiskImageRequest{VmName: name}, Format: pb.DiskFormat_DISK_FORMAT_RAW,
		Size: 64 << 20, DataBytes: 8 << 20,
	}}})
	b := make([]byte, 1<<20)
	rand.Read(b)
	stream.Send(&pb.ImportDiskMessage{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 0, Data: b}}})
	first, err := stream.Recv()
	if err != nil || first.GetStarted().GetCommandUuid() == "" {
		t.Fatalf("first reply %v, %v", first, err)
	}
	op, err := d.Lookup(first.GetStarted().GetCommandUuid(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return stream, cancel, op
}

// importEnd reads the import's replies to their end, failing on a Done.
func importEnd(t *testing.T, stream pb.Disks_ImportClient) error {
	t.Helper()
	for {
		r, err := stream.Recv()
		if err != nil {
			return err
		}
		if r.GetDone() != nil {
			t.Errorf("a stalled import told its outcome: %v", r.GetDone())
		}
	}
}

func TestImportCancelWithClientNotSending(t *testing.T) {
	e := stallClient(t, 0)
	c, d, base := e.c, e.d, e.base
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	stream, cancel, op := stalledImport(t, c, d, key.Name)
	waitFor(t, "the import waiting for the client's next chunk", func() bool { return recvBlocked(op) })

	ctx, done := context.WithTimeout(t.Context(), 30*time.Second)
	defer done()
	if err := op.Cancel(ctx); err != nil {
		t.Fatalf("Cancel with the client not sending = %v", err)
	}
	if p := op.Progress(); p.Status != diskimage.StatusFailed || p.Reason != "cancelled" {
		t.Errorf("cancelled import = %+v", p)
	}
	if d.Busy(key) {
		t.Error("the image is still held")
	}
	if err := importEnd(t, stream); status.Code(err) != codes.Canceled {
		t.Errorf("the stalled import's stream ended with %v, want Canceled", err)
	}
	if l, _ := d.List(t.Context(), key.Owner, nil, ""); len(l.Images) != 0 {
		t.Errorf("listed: %+v", l.Images)
	}
	if l := temporaries(e.root); len(l) > 0 {
		t.Errorf("left: %v", l)
	}
	cancel()
	leakFree(t, base)
}

func TestImportClientStallsTooLong(t *testing.T) {
	e := stallClient(t, 200*time.Millisecond)
	c, d, base := e.c, e.d, e.base
	key := diskimage.Key{Owner: "user-1000", Name: "dev"}
	stream, cancel, op := stalledImport(t, c, d, key.Name)
	<-op.Done()
	if p := op.Progress(); p.Status != diskimage.StatusFailed || !strings.Contains(p.Reason, "the sender gave no data for 200ms") {
		t.Errorf("stalled import = %+v", p)
	}
	if err := importEnd(t, stream); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("the stalled import's stream ended with %v, want DeadlineExceeded", err)
	}
	if l := temporaries(e.root); len(l) > 0 {
		t.Errorf("left: %v", l)
	}
	cancel()
	leakFree(t, base)
}
