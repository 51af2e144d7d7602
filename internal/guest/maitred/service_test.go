package maitred

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/grpctest"
)

// TestEveryMethodAnswers walks vm_tools.Maitred's descriptor and calls
// every method, with an empty request, on the real service over gRPC:
// none may answer UNIMPLEMENTED. The test's VM has no network, no disk,
// no share and no tremplin, so most refuse; each refusal must say what is
// missing.
func TestEveryMethodAnswers(t *testing.T) {
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName("vm_tools.Maitred")
	if err != nil {
		t.Fatal(err)
	}
	svc := desc.(protoreflect.ServiceDescriptor)
	m, s := newTest(t, Config{PowerOff: func() {}})
	// This agent configures no network: the calls that need one refuse.
	m.cfg.Net = nil
	cc := grpctest.Serve(t, func(srv *grpc.Server) { vmtools.RegisterMaitredServer(srv, s) })

	methods := svc.Methods()
	if methods.Len() < 19 {
		t.Fatalf("vm_tools.Maitred has %d methods; the seed has 19", methods.Len())
	}
	for i := range methods.Len() {
		md := methods.Get(i)
		t.Run(string(md.Name()), func(t *testing.T) {
			in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			if err != nil {
				t.Fatal(err)
			}
			out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			reply := out.New().Interface()
			err = cc.Invoke(ctx, "/"+string(svc.FullName())+"/"+string(md.Name()), in.New().Interface(), reply)
			st := status.Convert(err)
			switch st.Code() {
			case codes.Unimplemented:
				t.Fatalf("answers UNIMPLEMENTED: %v", st.Message())
			case codes.OK:
				t.Logf("OK: %v", reply)
			default:
				if st.Message() == "" {
					t.Errorf("%v without saying why", st.Code())
				}
				t.Logf("%v: %s", st.Code(), st.Message())
			}
		})
	}
}
