package concierge

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/vmm"
	"github.com/cabinvm/cabin/internal/vmm/vmmtest"
)

// pendingMethods are the VmConcierge methods still answering
// UNIMPLEMENTED while their work lands; the test fails for one that
// answers, so that the list only shrinks. Empty once every method is
// served.
var pendingMethods = []string{}

// The service's descriptor, walked: every method is called through an
// in-memory server with a minimal request (its name fields naming a VM
// that runs), and none answers UNIMPLEMENTED.
func TestEveryMethodAnswers(t *testing.T) {
	e := vmmtest.New(t)
	disks, err := diskimage.New(diskimage.Options{Root: e.Root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disks.Close)
	e.Start(t, vmm.Spec{Key: vmm.Key{Name: "desc-vm"}})
	cc := grpctest.Serve(t, func(s *grpc.Server) {
		pb.RegisterVmConciergeServer(s, New(e.M, Options{Disks: disks}))
	})
	sd, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(pb.VmConcierge_ServiceDesc.ServiceName))
	if err != nil {
		t.Fatal(err)
	}
	methods := sd.(protoreflect.ServiceDescriptor).Methods()
	if methods.Len() < 46 {
		t.Fatalf("the descriptor has %d methods; the seed's service has 46", methods.Len())
	}
	for i := 0; i < methods.Len(); i++ {
		md := methods.Get(i)
		name := string(md.Name())
		if md.IsStreamingClient() || md.IsStreamingServer() {
			t.Errorf("%s streams: this test calls unary methods only", name)
			continue
		}
		req := minimalRequest(md.Input())
		resp := dynamicpb.NewMessage(md.Output())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := cc.Invoke(ctx, "/"+string(sd.FullName())+"/"+name, req, resp)
		cancel()
		code := status.Code(err)
		pending := slices.Contains(pendingMethods, name)
		switch {
		case code == codes.Unimplemented && !pending:
			t.Errorf("%s answers UNIMPLEMENTED: %v", name, err)
		case code != codes.Unimplemented && pending:
			t.Errorf("%s answers (%v) but is listed pending: take it off pendingMethods", name, code)
		case code == codes.DeadlineExceeded:
			t.Errorf("%s hung: %v", name, err)
		default:
			t.Logf("%s: %v", name, code)
		}
	}
}

// minimalRequest is an empty message of type d, but for the fields that
// name a VM, which name the test's.
func minimalRequest(d protoreflect.MessageDescriptor) *dynamicpb.Message {
	m := dynamicpb.NewMessage(d)
	for _, f := range []protoreflect.Name{"name", "vm_name"} {
		if fd := d.Fields().ByName(f); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
			m.Set(fd, protoreflect.ValueOfString("desc-vm"))
		}
	}
	return m
}
