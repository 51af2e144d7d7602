package concierge

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// A DiskImage becomes cabin's disk with its format said; what cabin
// cannot honour is refused naming the field.
func TestDiskConversion(t *testing.T) {
	d, err := Disk("disks[0]", &pb.DiskImage{
		Path: "/d.qcow2", ImageType: pb.DiskImageType_DISK_IMAGE_QCOW2, Writable: true,
		DoMount: true, MountPoint: "/data", Fstype: "ext4", Flags: 2, Data: "discard", MultipleWorkers: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != "/d.qcow2" || d.Format != hypervisor.DiskQcow2 || !d.Writable || d.Mount == nil ||
		d.Mount.Target != "/data" || d.Mount.FSType != "ext4" || d.Mount.Flags != 2 || d.Mount.Data != "discard" {
		t.Errorf("disk %+v (mount %+v)", d, d.Mount)
	}
	// Not mounted unless do_mount; AUTO leaves the format to the store.
	d, err = Disk("disks[0]", &pb.DiskImage{Path: "/d.img", ImageType: pb.DiskImageType_DISK_IMAGE_AUTO, MountPoint: "/x"})
	if err != nil || d.Mount != nil || d.Format != "" {
		t.Errorf("auto, not mounted: %+v, %v", d, err)
	}
	for _, tt := range []struct {
		d    *pb.DiskImage
		want string
	}{
		{&pb.DiskImage{Path: "/p", ImageType: pb.DiskImageType_DISK_IMAGE_PLUGINVM}, "disks[0].image_type"},
		{&pb.DiskImage{Path: "/p", ImageType: 9}, "disks[0].image_type"},
		{&pb.DiskImage{Path: "/p", BlockSize: 4096}, "disks[0].block_size"},
		{&pb.DiskImage{Path: "/p", ODirect: true}, "disks[0].o_direct"},
	} {
		if _, err := Disk("disks[0]", tt.d); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error naming %s", tt.d, err, tt.want)
		}
	}
}

// Termina features: the live ones pass, deprecated and unknown ones are
// refused naming the field.
func TestStartVmFeatures(t *testing.T) {
	m, _ := newManager(t)
	c := New(m, Options{})
	for f, want := range map[pb.StartVmRequest_TerminaFeature]codes.Code{
		pb.StartVmRequest_UNKNOWN:   codes.InvalidArgument,
		pb.StartVmRequest_START_LXD: codes.InvalidArgument,
		pb.StartVmRequest_LXD_4_LTS: codes.InvalidArgument,
		42:                          codes.InvalidArgument,
	} {
		_, err := c.StartVm(context.Background(), &pb.StartVmRequest{Name: "vm", Cpus: 1, Features: []pb.StartVmRequest_TerminaFeature{pb.StartVmRequest_LXD_5_LTS, f}})
		if s := status.Convert(err); s.Code() != want || !strings.HasPrefix(s.Message(), "features[1]:") {
			t.Errorf("feature %v: %v, want %v naming features[1]", f, err, want)
		}
	}
	// The live ones reach the launch (which fails here: no QEMU).
	resp, err := c.StartVm(context.Background(), &pb.StartVmRequest{Name: "vm", Cpus: 1, WritableRootfs: true,
		Features: []pb.StartVmRequest_TerminaFeature{pb.StartVmRequest_USED_BY_TESTS, pb.StartVmRequest_LXD_5_LTS}})
	if err != nil || resp.GetSuccess() || resp.GetStatus() != pb.VmStatus_VM_STATUS_FAILURE {
		t.Errorf("start with live features: %v, %v", resp, err)
	}
}
