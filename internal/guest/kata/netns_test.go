package kata

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/guest/netconf/netconftest"
)

func TestShareNetwork(t *testing.T) {
	pid := specs.LinuxNamespace{Type: specs.PIDNamespace}
	netns := func(path string) []specs.LinuxNamespace {
		return []specs.LinuxNamespace{pid, {Type: specs.NetworkNamespace, Path: path}}
	}
	for _, tc := range []struct {
		name  string
		ns    []specs.LinuxNamespace
		share bool
		want  []specs.LinuxNamespace
	}{
		{"no network namespace", []specs.LinuxNamespace{pid}, true, []specs.LinuxNamespace{pid}},
		{"a new one", netns(""), false, netns("")},
		{"the agent's", netns("/proc/thread-self/ns/net"), true, []specs.LinuxNamespace{pid}},
		// Any of its threads' will do, as a client naming /proc/1/ns/net
		// does in the VM: here the test's main thread may be parked in
		// another test's namespace.
		{"the agent's, by a thread", netns(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())), true, []specs.LinuxNamespace{pid}},
	} {
		spec := &specs.Spec{Linux: &specs.Linux{Namespaces: slices.Clone(tc.ns)}}
		share, err := shareNetwork("OCI.Linux", spec)
		if err != nil || share != tc.share || !slices.Equal(spec.Linux.Namespaces, tc.want) {
			t.Errorf("%s: share %v, namespaces %v, %v; want %v, %v", tc.name, share, spec.Linux.Namespaces, err, tc.share, tc.want)
		}
	}
	if share, err := shareNetwork("OCI.Linux", &specs.Spec{}); !share || err != nil {
		t.Errorf("a spec without linux: %v, %v", share, err)
	}
	file := filepath.Join(t.TempDir(), "net")
	os.WriteFile(file, nil, 0o644)
	for _, path := range []string{"/nonexistent/netns", file, "/proc/self/ns/uts"} {
		spec := &specs.Spec{Linux: &specs.Linux{Namespaces: netns(path)}}
		_, err := shareNetwork("OCI.Linux", spec)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "OCI.Linux.Namespaces[1].Path: ") {
			t.Errorf("%s: %v, want an invalid argument naming the path", path, err)
		}
	}
}

// Another namespace of the guest's (another container's) is joined as
// asked.
func TestShareNetworkOtherNamespace(t *testing.T) {
	other := netconftest.New(t)
	spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: other.Path}}}}
	share, err := shareNetwork("OCI.Linux", spec)
	if err != nil || share || len(spec.Linux.Namespaces) != 1 {
		t.Errorf("another namespace: share %v, %v, %v", share, spec.Linux.Namespaces, err)
	}
}

// Create refuses a path that names no network namespace before it runs
// anything.
func TestCreateRefusesBadNetworkNamespace(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	spec := &pb.Spec{
		Process: &pb.Process{Args: []string{"true"}},
		Root:    &pb.Root{Path: "/run/rootfs"},
		// A host's path, as a Kata runtime that did not strip it sends.
		Linux: &pb.Linux{Namespaces: []*pb.LinuxNamespace{{Type: "network", Path: "/var/run/netns/cni-1234"}}},
	}
	_, err := c.CreateContainer(t.Context(), &pb.CreateContainerRequest{ContainerId: "c1", OCI: spec})
	wantCode(t, "host netns path", err, codes.InvalidArgument, "OCI.Linux.Namespaces[0].Path: ")
}
