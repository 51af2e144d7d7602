package concierge

import (
	"context"
	"os/exec"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

func diskClient(t *testing.T) (pb.VmConciergeClient, *diskimage.Store) {
	t.Helper()
	_, c, disks := diskEnv(t)
	return c, disks
}

// diskEnv is diskClient with the VM manager's test environment.
func diskEnv(t *testing.T) (*vmmtest.Env, pb.VmConciergeClient, *diskimage.Store) {
	t.Helper()
	for _, p := range []string{"qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	disks, err := diskimage.New(diskimage.Options{Root: vmmtest.New(t).Root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disks.Close)
	e := vmmtest.New(t, diskimage.Resource{Store: disks})
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmConciergeServer(s, New(e.M, Options{Disks: disks})) }, grpctest.UIDs()...)
	return e, pb.NewVmConciergeClient(cc), disks
}

// SetCrostiniVmType changes the type ListVmDisks reports of the Termina
// VM's disk, as upstream's changes its disk's, along with the VM's.
func TestSetCrostiniVmTypeSetsTheDisks(t *testing.T) {
	e, c, _ := diskEnv(t)
	ctx := context.Background()
	if r, err := c.CreateDiskImage(ctx, &pb.CreateDiskImageRequest{VmName: vmm.TerminaName, DiskSize: 1 << 20, VmType: pb.VmInfo_TERMINA}); err != nil || r.GetStatus() != pb.DiskImageStatus_DISK_STATUS_CREATED {
		t.Fatalf("CreateDiskImage = %v, %v", r, err)
	}
	diskType := func() pb.VmInfo_VmType {
		t.Helper()
		l, err := c.ListVmDisks(ctx, &pb.ListVmDisksRequest{AllLocations: true, VmName: vmm.TerminaName})
		if err != nil || len(l.GetImages()) != 1 || !l.GetImages()[0].GetHasVmType() {
			t.Fatalf("ListVmDisks = %v, %v", l, err)
		}
		return l.GetImages()[0].GetVmType()
	}
	if got := diskType(); got != pb.VmInfo_TERMINA {
		t.Fatalf("created as %v", got)
	}
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: vmm.TerminaName}})
	// Refused while the VM runs: neither changes.
	if r, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE}); err != nil || r.GetSuccess() {
		t.Errorf("while termina runs: %v, %v", r, err)
	}
	if got := diskType(); got != pb.VmInfo_TERMINA {
		t.Errorf("a refused change changed the disk: %v", got)
	}
	e.M.Stop(ctx, vmm.Key{Name: vmm.TerminaName})
	if r, err := c.SetCrostiniVmType(ctx, &pb.SetCrostiniVmTypeRequest{VmType: pb.VmInfo_BAGUETTE}); err != nil || !r.GetSuccess() {
		t.Fatalf("stopped termina: %v, %v", r, err)
	}
	if got := diskType(); got != pb.VmInfo_BAGUETTE {
		t.Errorf("the disk reports %v, want BAGUETTE", got)
	}
}

func TestDiskCallsApplyTheOwnerRule(t *testing.T) {
	c, _ := diskClient(t)
	user := grpctest.AsUID(1000)
	resp, err := c.CreateDiskImage(user, &pb.CreateDiskImageRequest{VmName: "dev", DiskSize: 1 << 20})
	if err != nil || resp.GetStatus() != pb.DiskImageStatus_DISK_STATUS_CREATED {
		t.Fatalf("CreateDiskImage = %v, %v", resp, err)
	}
	// Another user names the first's owner: refused; its own: not there.
	if _, err := c.CreateDiskImage(grpctest.AsUID(1001), &pb.CreateDiskImageRequest{CryptohomeId: "user-1000", VmName: "dev", DiskSize: 1 << 20}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("create as another owner = %v", err)
	}
	l, err := c.ListVmDisks(grpctest.AsUID(1001), &pb.ListVmDisksRequest{AllLocations: true})
	if err != nil || len(l.GetImages()) != 0 {
		t.Errorf("another user's list = %v, %v", l, err)
	}
	d, err := c.DestroyDiskImage(grpctest.AsUID(1001), &pb.DestroyDiskImageRequest{VmName: "dev"})
	if err != nil || d.GetStatus() != pb.DiskImageStatus_DISK_STATUS_DOES_NOT_EXIST {
		t.Errorf("another user's destroy = %v, %v", d, err)
	}
	// Root sees it under the user's owner id.
	l, err = c.ListVmDisks(grpctest.AsUID(0), &pb.ListVmDisksRequest{CryptohomeId: "user-1000", AllLocations: true})
	if err != nil || len(l.GetImages()) != 1 || l.GetImages()[0].GetName() != "dev" || l.GetImages()[0].GetSize() != 1<<20 || !l.GetImages()[0].GetUserChosenSize() {
		t.Errorf("root's list of the user's = %v, %v", l, err)
	}
	// A resize by the user, its status seen by it and not by another.
	r, err := c.ResizeDiskImage(user, &pb.ResizeDiskImageRequest{VmName: "dev", DiskSize: 2 << 20})
	if err != nil || r.GetStatus() != pb.DiskImageStatus_DISK_STATUS_IN_PROGRESS || r.GetCommandUuid() == "" {
		t.Fatalf("ResizeDiskImage = %v, %v", r, err)
	}
	for {
		st, err := c.DiskImageStatus(user, &pb.DiskImageStatusRequest{CommandUuid: r.GetCommandUuid()})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStatus() != pb.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
			if st.GetStatus() != pb.DiskImageStatus_DISK_STATUS_RESIZED || st.GetProgress() != 100 {
				t.Errorf("resize ended %v", st)
			}
			break
		}
	}
	st, err := c.DiskImageStatus(grpctest.AsUID(1001), &pb.DiskImageStatusRequest{CommandUuid: r.GetCommandUuid()})
	if err != nil || st.GetStatus() != pb.DiskImageStatus_DISK_STATUS_FAILED {
		t.Errorf("another user's status = %v, %v", st, err)
	}
	cancel, err := c.CancelDiskImageOperation(grpctest.AsUID(1001), &pb.CancelDiskImageRequest{CommandUuid: r.GetCommandUuid()})
	if err != nil || cancel.GetSuccess() {
		t.Errorf("another user's cancel = %v, %v", cancel, err)
	}
}

func TestDiskBadRequests(t *testing.T) {
	c, _ := diskClient(t)
	ctx := grpctest.AsUID(0)
	for _, req := range []*pb.CreateDiskImageRequest{
		{VmName: "a/b", DiskSize: 1 << 20},
		{VmName: "..", DiskSize: 1 << 20},
		{VmName: "a\x00b", DiskSize: 1 << 20},
		{VmName: "dev", AllocationType: pb.DiskImageAllocationType_DISK_ALLOCATION_TYPE_PREALLOCATE},
		{VmName: "dev", DiskSize: 1000},
		{VmName: "dev", DiskSize: 1 << 20, FilesystemType: pb.FilesystemType_EXT4, MkfsOpts: []string{"-d", "/etc"}},
	} {
		if _, err := c.CreateDiskImage(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateDiskImage(%v) = %v, want INVALID_ARGUMENT", req, err)
		}
	}
	resp, err := c.CreateDiskImage(ctx, &pb.CreateDiskImageRequest{VmName: "dev", DiskSize: 1 << 60 &^ 511,
		AllocationType: pb.DiskImageAllocationType_DISK_ALLOCATION_TYPE_PREALLOCATE})
	if err == nil && resp.GetStatus() == pb.DiskImageStatus_DISK_STATUS_CREATED {
		t.Errorf("an image above the free space = %v", resp)
	}
	// Export and import need cabin.v1.Disks: said in the body.
	ex, err := c.ExportDiskImage(ctx, &pb.ExportDiskImageRequest{VmName: "dev"})
	if err != nil || ex.GetStatus() != pb.DiskImageStatus_DISK_STATUS_FAILED {
		t.Errorf("ExportDiskImage = %v, %v", ex, err)
	}
}

// A VM whose image is under an operation does not start.
func TestStartVmUnderADiskOperation(t *testing.T) {
	c, disks := diskClient(t)
	ctx := grpctest.AsUID(0)
	if _, err := c.CreateDiskImage(ctx, &pb.CreateDiskImageRequest{VmName: "dev", DiskSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	sink := &blockingSink{started: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := disks.Export(t.Context(), diskimage.ExportRequest{Key: diskimage.Key{Name: "dev"}}, sink, nil)
		done <- err
	}()
	<-sink.started
	resp, err := c.StartVm(ctx, &pb.StartVmRequest{Name: "dev", Cpus: 1})
	close(sink.release)
	<-done
	if err != nil || resp.GetSuccess() || resp.GetStatus() != pb.VmStatus_VM_STATUS_DISK_OP_IN_PROGRESS {
		t.Errorf("StartVm under an export = %v, %v", resp, err)
	}
}

type blockingSink struct {
	started, release chan struct{}
}

func (s *blockingSink) Begin(diskimage.Format, int64, int64) error {
	close(s.started)
	<-s.release
	return nil
}

func (s *blockingSink) Write(diskimage.Chunk) error { return nil }
