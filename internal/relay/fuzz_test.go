package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// fuzzMD reads metadata from fuzz input: one "key=value" per line, keys
// lower-cased and repeated keys merged, as gRPC's transport hands them to
// a server.
func fuzzMD(s string) metadata.MD {
	md := metadata.MD{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			md.Append(k, v)
		}
	}
	return md
}

// dropped reports whether outgoing must leave key out: the routing keys
// and those gRPC sets itself.
func dropped(key string) bool {
	return key == MetadataVM || key == MetadataOwner || key == "content-type" || key == "user-agent" ||
		strings.HasPrefix(key, ":") || strings.HasPrefix(key, "grpc-")
}

// recordingConn is an agent connection that records what a relayed call
// carried.
type recordingConn struct {
	method string
	md     metadata.MD
	calls  int
}

func (c *recordingConn) Invoke(ctx context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	c.calls++
	c.method = method
	c.md, _ = metadata.FromOutgoingContext(ctx)
	if f, ok := reply.(*Frame); ok {
		f.b = []byte{}
	}
	return nil
}

func (c *recordingConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("not for this test")
}

// FuzzMetadata sends a unary call with arbitrary metadata through the
// relay's interceptor. A call is relayed exactly when it names a VM, to
// the VM its first cabin-vm and cabin-owner values name; the agent gets
// every other key with its values unchanged and none of the routing or
// gRPC-reserved keys; a call not relayed reaches the local handler with
// its metadata untouched; a failure to find the VM keeps its category.
// The method is relayed as named; isUnary agrees with the registry on it
// and remembers only methods of registered services, so callers cannot
// grow its cache.
func FuzzMetadata(f *testing.F) {
	methods := []string{
		"/vm_tools.Maitred/GetKernelVersion", "/cabin.exec.v1.Exec/Exec", "/grpc.health.v1.Health/Check",
		"/vm_tools.Maitred/", "/vm_tools.Maitred", "vm_tools.Maitred/Mount", "//", "/vm_tools.EmptyMessage/x", "/\x00/\xff",
	}
	for i, s := range []string{
		"",
		"cabin-vm=vm1",
		"cabin-vm=vm1\ncabin-owner=alice\nx-request=r",
		"Cabin-VM=vm1\nCABIN-OWNER=bob",
		"cabin-vm=a\ncabin-vm=b\ncabin-owner=o1\ncabin-owner=o2",
		"cabin-vm=\ncabin-owner=",
		"cabin-owner=alice",
		"cabin-vm=vm1\n:authority=x\ngrpc-timeout=1S\ngrpc-trace-bin=\x00\ncontent-type=application/grpc\nuser-agent=u\nkeep=1\nkeep=2",
		"cabin-vm=r1 \ncabin-vm=ünï€",
		"x-bin=\x00\xff\ncabin-vm=../../etc",
		"=\n==\ncabin-vm==",
	} {
		f.Add(s, methods[i%len(methods)])
	}
	f.Fuzz(func(t *testing.T, s, method string) {
		u, known := lookupUnary(method)
		if !known && u {
			t.Fatalf("%q: unary but unknown", method)
		}
		if got := isUnary(method); got != u {
			t.Fatalf("isUnary(%q) = %v, lookup says %v", method, got, u)
		}
		if _, cached := unaryMethods.Load(method); cached != known {
			t.Fatalf("%q: cached %v, known %v", method, cached, known)
		}

		in := fuzzMD(s)
		names, owners := in.Get(MetadataVM), in.Get(MetadataOwner)

		cc := &recordingConn{}
		var gotOwner, gotName string
		targets := 0
		r := New(func(_ context.Context, owner, name string) (grpc.ClientConnInterface, error) {
			targets++
			gotOwner, gotName = owner, name
			if name == "" {
				return nil, fmt.Errorf("vm %q: %w", name, errdefs.ErrNotFound)
			}
			return cc, nil
		}, nil)
		var local metadata.MD
		handled := 0
		handler := func(ctx context.Context, _ any) (any, error) {
			handled++
			local, _ = metadata.FromIncomingContext(ctx)
			return &vmtools.EmptyMessage{}, nil
		}
		ctx := metadata.NewIncomingContext(context.Background(), in.Copy())
		_, err := r.unary(ctx, &vmtools.EmptyMessage{}, &grpc.UnaryServerInfo{FullMethod: method}, handler)

		owner, name, ok := route(ctx)
		if ok != (len(names) > 0) {
			t.Fatalf("route ok = %v with cabin-vm %q", ok, names)
		}
		if len(names) == 0 {
			if err != nil || handled != 1 || targets != 0 || cc.calls != 0 {
				t.Fatalf("call naming no VM: err %v, handled %d, targets %d, relayed %d", err, handled, targets, cc.calls)
			}
			if !mdEqual(local, in) {
				t.Fatalf("local handler got %v, want %v", local, in)
			}
			return
		}
		wantOwner := ""
		if len(owners) > 0 {
			wantOwner = owners[0]
		}
		if name != names[0] || owner != wantOwner {
			t.Fatalf("route = (%q, %q), want (%q, %q)", owner, name, wantOwner, names[0])
		}
		if handled != 0 || targets != 1 || gotOwner != owner || gotName != name {
			t.Fatalf("call naming VM (%q, %q): handled %d, target called %d times with (%q, %q)",
				owner, name, handled, targets, gotOwner, gotName)
		}
		if name == "" {
			if status.Code(err) != codes.NotFound || cc.calls != 0 {
				t.Fatalf("unknown VM: %v, relayed %d", err, cc.calls)
			}
			return
		}
		if err != nil || cc.calls != 1 || cc.method != method {
			t.Fatalf("relay: %v, %d calls, method %q", err, cc.calls, cc.method)
		}
		for k, v := range cc.md {
			if dropped(k) {
				t.Errorf("agent got %q: %q", k, v)
			}
		}
		for k, v := range in {
			if !dropped(k) && !slices.Equal(cc.md[k], v) {
				t.Errorf("agent got %q: %q, the caller sent %q", k, cc.md[k], v)
			}
		}
		if len(cc.md) > len(in) {
			t.Errorf("agent got %v from %v", cc.md, in)
		}
	})
}

func mdEqual(a, b metadata.MD) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
