package integration

import (
	"strings"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// TestGuestRunsTheImageKernel: the guest runs the kernel cabind says it
// does (cabind --kernel: cabin's minimal kernel where it is built, else
// Debian's), and a kernel with everything built in has no module loading
// for the agent to fail at.
func TestGuestRunsTheImageKernel(t *testing.T) {
	e := needEnv(t)
	ctx := testContext(t, time.Minute)
	v, err := cabinv1.NewSystemClient(e.cc).Version(ctx, &cabinv1.VersionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	release := strings.TrimSpace(mustExec(t, e, sharedName, "uname", "-r"))
	if !strings.HasPrefix(v.GetGuestKernel(), release+" (") {
		t.Errorf("cabind says the guest kernel is %q; the guest runs %q", v.GetGuestKernel(), release)
	}
	t.Logf("guest kernel: %s", v.GetGuestKernel())
	if strings.Contains(v.GetGuestKernel(), "(file ") && guestHasModules(t, e, sharedName) {
		t.Errorf("a kernel given as a file has module support: %q", mustExec(t, e, sharedName, "cat", "/proc/modules"))
	}
	// What the agent would have loaded as modules is there either way.
	for _, fs := range []string{"9p", "overlay", "ext4"} {
		if out := mustExec(t, e, sharedName, "cat", "/proc/filesystems"); !strings.Contains(out, "\t"+fs+"\n") {
			t.Errorf("the guest kernel has no %s file system:\n%s", fs, out)
		}
	}
}

// guestHasModules reports whether the guest's kernel loads modules:
// Debian's does, cabin's minimal kernel has them all built in.
func guestHasModules(t *testing.T, e *env, vm string) bool {
	t.Helper()
	return strings.TrimSpace(mustExec(t, e, vm, "sh", "-c", "test -e /proc/modules && echo yes || echo no")) == "yes"
}
