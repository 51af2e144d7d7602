package integration

import (
	"bufio"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
)

// TestBadStartVm sends StartVm requests cabind must refuse: each is
// INVALID_ARGUMENT naming the field at fault, and none of them leaves a
// VM directory or a QEMU behind.
func TestBadStartVm(t *testing.T) {
	e := needEnv(t)
	hostMiB := hostMemoryMiB(t)
	// The name the requests with a bad size use: if one were accepted, the
	// VM would have to go.
	const okName = "cit-bad-input"
	t.Cleanup(func() {
		if listed(t, e, okName) {
			stopVM(t, e, okName)
		}
	})
	dirsBefore := vmDirs(t, e)
	qemuBefore := qemuPIDs(e.stateDir)

	tests := []struct {
		name  string
		req   *cabinv1.StartVmRequest
		field string
	}{
		{"empty name", start("", 1), "name"},
		{"name dot", start(".", 1), "name"},
		{"name dotdot", start("..", 1), "name"},
		{"name slash", start("/", 1), "name"},
		{"name NUL", start("a\x00b", 1), "name"},
		{"name 61 characters", start(strings.Repeat("n", 61), 1), "name"},
		{"name control character", start("\x01", 1), "name"},
		{"cpus 0", start(okName, 0), "cpus"},
		{"cpus above host", start(okName, runtime.NumCPU()+1), "cpus"},
		{"memory 63 MiB", withMemory(start(okName, 1), 63), "memory_mib"},
		{"memory above host", withMemory(start(okName, 1), hostMiB+1), "memory_mib"},
		{"missing kernel", withKernel(start(okName, 1), "/nonexistent/vmlinux"), "kernel_path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := cabinv1.NewVmsClient(e.cc).StartVm(testContext(t, 30*time.Second), tc.req)
			if err == nil {
				t.Fatalf("accepted: %v", resp)
			}
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
	// The names again through the upstream service.
	for _, tc := range tests[:7] {
		t.Run("concierge "+tc.name, func(t *testing.T) {
			_, err := concierge.NewVmConciergeClient(e.cc).StartVm(testContext(t, 30*time.Second), tc.req.GetRequest())
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}

	if after := vmDirs(t, e); !slices.Equal(after, dirsBefore) {
		t.Errorf("rejected requests changed the state dir's vms/: %v before, %v after", dirsBefore, after)
	}
	if after := qemuPIDs(e.stateDir); !slices.Equal(after, qemuBefore) {
		t.Errorf("rejected requests changed the QEMU processes: %v before, %v after", qemuBefore, after)
	}
}

func start(name string, cpus int) *cabinv1.StartVmRequest {
	return &cabinv1.StartVmRequest{Request: &concierge.StartVmRequest{Name: name, Cpus: uint32(cpus)}}
}

func withMemory(r *cabinv1.StartVmRequest, mib int) *cabinv1.StartVmRequest {
	r.MemoryMib = uint32(mib)
	return r
}

func withKernel(r *cabinv1.StartVmRequest, path string) *cabinv1.StartVmRequest {
	r.KernelPath = path
	return r
}

// hostMemoryMiB is the host's MemTotal.
func hostMemoryMiB(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(rest, "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb / 1024
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// TestKVMWhereUnusable asks for KVM where cabind detected that it cannot
// run guests: a failure (in the response, as concierge reports a VM that
// cannot start) saying why, and nothing started.
func TestKVMWhereUnusable(t *testing.T) {
	e := needEnv(t)
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	accel, reason, err := qemu.DetectAccel(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if accel == hypervisor.AccelKVM {
		t.Skipf("this host can run KVM guests (%s)", reason)
	}
	const name = "cit-kvm"
	dirsBefore := vmDirs(t, e)
	req := start(name, 1)
	req.Accelerator = cabinv1.Accelerator_ACCELERATOR_KVM
	resp, err := cabinv1.NewVmsClient(e.cc).StartVm(testContext(t, 30*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSuccess() || resp.GetStatus() != concierge.VmStatus_VM_STATUS_FAILURE ||
		!strings.Contains(resp.GetFailureReason(), "KVM") || !strings.Contains(resp.GetFailureReason(), reason) {
		t.Errorf("StartVm with KVM: %v; want a failure naming KVM and %q", resp, reason)
	}
	if listed(t, e, name) {
		stopVM(t, e, name)
		t.Error("the VM was started")
	}
	if after := vmDirs(t, e); !slices.Equal(after, dirsBefore) {
		t.Errorf("the refused request changed the state dir's vms/: %v before, %v after", dirsBefore, after)
	}
}

// TestUnknownVM checks how cabind answers for a VM that does not exist.
func TestUnknownVM(t *testing.T) {
	e := needEnv(t)
	const name = "cit-no-such-vm"

	t.Run("relay", func(t *testing.T) {
		_, err := vmtools.NewMaitredClient(e.cc).GetKernelVersion(toVM(testContext(t, 30*time.Second), name), &vmtools.EmptyMessage{})
		wantCode(t, err, codes.NotFound, name)
	})

	t.Run("GetVmInfo", func(t *testing.T) {
		if resp := vmInfo(t, e, name); resp.GetSuccess() {
			t.Errorf("GetVmInfo of an unknown VM succeeded: %v", resp)
		}
	})
}
