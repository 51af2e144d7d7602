package cabinv1

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// cabin.v1's AttachUsbDevice takes a device node's path, of one form
// only, and refuses a VM without hot-plug before it opens anything.
func TestAttachUsbDeviceByPath(t *testing.T) {
	e := vmmtest.New(t)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "micro"}, CPUs: 1})
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterVmsServer(s, NewVms(e.M)) })
	c := pb.NewVmsClient(cc)
	ctx := context.Background()
	for _, tc := range []struct {
		vm, path string
		code     codes.Code
		words    string
	}{
		{"micro", "/dev/null", codes.InvalidArgument, "device_path"},
		{"micro", "/dev/bus/usb/001/../../../../etc/passwd", codes.InvalidArgument, "device_path"},
		{"micro", "", codes.InvalidArgument, "device_path"},
		{"micro", "/dev/bus/usb/001/002", codes.FailedPrecondition, "hot-plug"},
		{"nope", "/dev/bus/usb/001/002", codes.NotFound, ""},
		{"a/b", "/dev/bus/usb/001/002", codes.InvalidArgument, "name"},
	} {
		_, err := c.AttachUsbDevice(ctx, &pb.AttachUsbDeviceRequest{VmName: tc.vm, DevicePath: tc.path})
		if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.words) {
			t.Errorf("%s %q: %v, want %v naming %q", tc.vm, tc.path, err, tc.code, tc.words)
		}
	}
}
