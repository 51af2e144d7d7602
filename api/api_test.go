// Package api_test guards the wire contract of the generated API packages.
package api_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/cabinvm/cabin/api/cabin/exec/v1"
	_ "github.com/cabinvm/cabin/api/cabin/v1"
	_ "github.com/cabinvm/cabin/api/concierge"
	_ "github.com/cabinvm/cabin/api/firecracker"
	_ "github.com/cabinvm/cabin/api/kata"
	_ "github.com/cabinvm/cabin/api/tremplin"
	_ "github.com/cabinvm/cabin/api/vmtools"
)

// seedCopies maps each seed in ../shared/spec/seeds to its copy in api/.
var seedCopies = map[string]string{
	"concierge_service.proto": "concierge/concierge_service.proto",
	"vm_guest.proto":          "vmtools/vm_guest.proto",
	"tremplin.proto":          "tremplin/tremplin.proto",
	"agent.proto":             "kata/agent.proto",
	"firecracker.proto":       "firecracker/firecracker.proto",
}

// TestSeedsUnchanged checks that the api/ copies differ from the seeds only
// in lines that do not travel on the wire: imports and go_package.
func TestSeedsUnchanged(t *testing.T) {
	seeds := filepath.Join("..", "..", "shared", "spec", "seeds")
	if _, err := os.Stat(seeds); err != nil {
		t.Skipf("seed directory not beside the checkout: %v", err)
	}
	for seed, copyPath := range seedCopies {
		want := wireLines(t, filepath.Join(seeds, seed))
		got := wireLines(t, copyPath)
		if len(want) != len(got) {
			t.Errorf("%s: %d wire-relevant lines, seed has %d", copyPath, len(got), len(want))
			continue
		}
		for i := range want {
			if want[i] != got[i] {
				t.Errorf("%s: line %q differs from seed %q", copyPath, got[i], want[i])
				break
			}
		}
	}
}

func wireLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "import ") || strings.HasPrefix(line, "option go_package") {
			continue
		}
		out = append(out, line)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMethodPaths checks full method paths that clients of the upstream
// systems call.
func TestMethodPaths(t *testing.T) {
	for _, path := range []string{
		"/vm_tools.concierge.VmConcierge/StartVm",
		"/vm_tools.concierge.VmConcierge/StopAllVms",
		"/Firecracker/CreateVM",
		"/vm_tools.Maitred/LaunchProcess",
		"/vm_tools.StartupListener/VmReady",
		"/grpc.AgentService/ExecProcess",
		"/grpc.Health/Check",
		"/vm_tools.tremplin.Tremplin/CreateContainer",
		"/vm_tools.tremplin.TremplinListener/TremplinReady",
		"/cabin.v1.Events/Watch",
		"/cabin.v1.Exec/Exec",
		"/cabin.v1.Vms/StartVm",
		"/cabin.v1.Images/Build",
	} {
		parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(parts[0]))
		if err != nil {
			t.Errorf("%s: service not registered: %v", path, err)
			continue
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			t.Errorf("%s: %s is not a service", path, parts[0])
			continue
		}
		if sd.Methods().ByName(protoreflect.Name(parts[1])) == nil {
			t.Errorf("%s: no such method", path)
		}
	}
}

// TestImportedFieldNumbers spot-checks numbers written by hand from
// spec/services.md, where a slip would break the wire silently.
func TestImportedFieldNumbers(t *testing.T) {
	for _, c := range []struct {
		message string
		field   string
		number  protoreflect.FieldNumber
	}{
		{"IPConfiguration", "GatewayAddr", 3},
		{"IPConfiguration", "Nameservers", 4},
		{"types.Interface", "raw_flags", 8},
		{"types.ARPNeighbor", "flags", 5},
		{"grpc.LinuxSyscall", "errnoret", 3},
		{"grpc.LinuxSyscall", "Args", 4},
		{"grpc.Spec", "Windows", 10},
		{"grpc.Linux", "IntelRdt", 13},
		{"grpc.LinuxBlockIO", "ThrottleWriteIOPSDevice", 7},
		{"grpc.VolumeUsage", "unit", 4},
		{"arc.StartArcMiniInstanceRequest", "enable_arc_attestation", 23},
		{"arc.StartArcMiniInstanceRequest", "dalvik_memory_profile", 9},
	} {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(c.message))
		if err != nil {
			t.Errorf("%s: %v", c.message, err)
			continue
		}
		f := d.(protoreflect.MessageDescriptor).Fields().ByName(protoreflect.Name(c.field))
		if f == nil {
			t.Errorf("%s.%s: no such field", c.message, c.field)
			continue
		}
		if f.Number() != c.number {
			t.Errorf("%s.%s = %d, want %d", c.message, c.field, f.Number(), c.number)
		}
	}
}
