package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
)

// TestCodeCacheCapped: a VM under TCG runs with its translated-code cache
// capped (docs/decisions.md §29), and works past a flush of it: the
// shared VM runs enough new code (a container's runtime, busybox applets)
// to fill and refill much of 64 MiB and still answers.
func TestCodeCacheCapped(t *testing.T) {
	e := needEnv(t)
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	accel, _, err := qemu.DetectAccel(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.shared.pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	var accelArg string
	for i, a := range args {
		if a == "-accel" && i+1 < len(args) {
			accelArg = args[i+1]
		}
	}
	want := fmt.Sprintf("tb-size=%d", qemu.TCGCodeCacheMiB)
	switch accel {
	case hypervisor.AccelTCG:
		if !strings.Contains(accelArg, want) {
			t.Fatalf("-accel %q, want %s", accelArg, want)
		}
	case hypervisor.AccelKVM:
		if strings.Contains(accelArg, "tb-size") {
			t.Fatalf("-accel %q under KVM, want no tb-size", accelArg)
		}
	}
	// New code for the guest to translate, then an answer from it.
	out := mustExec(t, e, e.shared.name, "sh", "-c",
		"for k in 1 2; do gzip -c /bin/busybox | md5sum; sha256sum /bin/busybox; find / -xdev | wc -l; done >/dev/null; echo done")
	if strings.TrimSpace(out) != "done" {
		t.Errorf("workload said %q", out)
	}
}
