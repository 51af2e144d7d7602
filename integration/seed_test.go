package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// seedsDir holds the API contract's .proto files as the project was given
// them, outside this repository.
var seedsDir = filepath.Join("..", "..", "shared", "spec", "seeds")

// commonProto is the file vm_guest.proto imports but the seeds lack,
// written from spec/services.md.
const commonProto = `syntax = "proto3";
package vm_tools;
message EmptyMessage {}
`

// TestSeedOnlyClient calls Maitred through cabind with a client that knows
// nothing but the seed vm_guest.proto, compiled here: no generated code of
// cabin's is involved, so this is what any client built from the contract
// sees on the wire.
func TestSeedOnlyClient(t *testing.T) {
	e := needEnv(t)
	if _, err := os.Stat(filepath.Join(seedsDir, "vm_guest.proto")); err != nil {
		t.Skipf("the seed protos are not here: %v", err)
	}
	ctx := testContext(t, 30*time.Second)
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(protocompile.CompositeResolver{
			&protocompile.SourceResolver{ImportPaths: []string{seedsDir}},
			&protocompile.SourceResolver{Accessor: protocompile.SourceAccessorFromMap(map[string]string{
				"common.proto": commonProto,
			})},
		}),
	}
	files, err := compiler.Compile(ctx, "vm_guest.proto")
	if err != nil {
		t.Fatalf("compile the seed: %v", err)
	}
	svc := files[0].Services().ByName("Maitred")
	if svc == nil {
		t.Fatal("the seed has no service Maitred")
	}
	method := svc.Methods().ByName("GetKernelVersion")
	if method == nil {
		t.Fatal("Maitred has no GetKernelVersion")
	}
	path := "/" + string(svc.FullName()) + "/" + string(method.Name())
	if path != "/vm_tools.Maitred/GetKernelVersion" {
		t.Fatalf("method path %s", path)
	}
	req := dynamicpb.NewMessage(method.Input())
	resp := dynamicpb.NewMessage(method.Output())
	if err := e.cc.Invoke(toVM(ctx, e.shared.name), path, req, resp); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	field := func(name protoreflect.Name) string {
		fd := method.Output().Fields().ByName(name)
		if fd == nil {
			t.Fatalf("%s has no field %s", method.Output().FullName(), name)
		}
		return resp.Get(fd).String()
	}
	for f, flag := range map[protoreflect.Name]string{"kernel_release": "-r", "kernel_version": "-v"} {
		want := strings.TrimSpace(mustExec(t, e, e.shared.name, "uname", flag))
		if got := field(f); got != want || got == "" {
			t.Errorf("%s %q, want the guest's uname %s %q", f, got, flag, want)
		}
	}
	if n := len(resp.GetUnknown()); n != 0 {
		t.Errorf("the response has %d bytes the seed does not describe", n)
	}
}
