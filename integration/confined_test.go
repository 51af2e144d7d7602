package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// readOnlyHost makes every mount of the host read-only in a mount
// namespace of its own, but the kernel's (proc, sys, dev) and the one
// directory given, and then runs the rest of its arguments there. It fails
// (exit 97) if the root stays writable.
const readOnlyHost = `set -eu
rw=$1; shift
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
	case $m in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
	mount -o remount,bind,ro "$m" 2>/dev/null || true
done
if touch /.cabin-rw-check 2>/dev/null; then
	rm -f /.cabin-rw-check
	echo "the root could not be made read-only" >&2
	exit 97
fi
mount --bind "$rw" "$rw"
mount -o remount,bind,rw "$rw"
exec "$@"
`

// TestWritesOnlyStateDir runs a second cabind where the whole host but its
// own directory (state dir and socket) is read-only, and takes a VM
// through its life there: the guest image built (downloading the kernel
// and busybox again), started, an exec, its logs, a cabind restart,
// stopped. A write anywhere else would fail with EROFS, and fail the step
// or show in cabind's log.
func TestWritesOnlyStateDir(t *testing.T) {
	e := needEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root, to make mounts read-only in a mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("needs unshare (util-linux): %v", err)
	}
	dir, err := os.MkdirTemp("", "cro")
	if err != nil {
		t.Fatal(err)
	}
	reapAfter(dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &env{
		dir: dir, bin: e.bin,
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "cabind.sock"),
		logPath:  filepath.Join(dir, "cabind.log"),
		// Debian's kernel, whatever the shared cabind boots: this build
		// downloads it and resolves its modules.
		kernel: "generic",
		wrap:   []string{unshare, "--mount", "--propagation", "private", "--", "sh", "-c", readOnlyHost, "sh", dir},
	}
	// Where the host does not let us make it read-only, there is nothing
	// to test.
	if out, err := exec.Command(c.wrap[0], append(c.wrap[1:], "true")...).CombinedOutput(); err != nil {
		t.Skipf("cannot make the host read-only in a mount namespace here: %v: %s", err, out)
	}
	// The guest image as the shared cabind built it, so that this one
	// does not download the kernel again.
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(e.stateDir, "image"), c.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the guest image: %v: %s", err, out)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := c.startDaemon(ctx); err != nil {
		log, _ := os.ReadFile(c.logPath)
		t.Fatalf("start the confined cabind: %v\n%s", err, log)
	}
	t.Cleanup(func() {
		if c.daemonRunning() {
			if err := c.stopDaemon(); err != nil {
				t.Errorf("stop the confined cabind: %v", err)
			}
		}
		if left := killQEMUs(c.stateDir); len(left) > 0 {
			t.Errorf("QEMU processes %v of the confined cabind were left running; killed them", left)
		}
		c.cc.Close()
	})

	// A build from nothing but the downloaded busybox: apt, dpkg-deb and
	// the rest write only where cabind tells them to.
	debs, err := filepath.Glob(filepath.Join(c.stateDir, "image", "downloads", "busybox-static_*.deb"))
	if err != nil || len(debs) != 1 {
		t.Fatalf("the copied image's busybox package: %q, %v", debs, err)
	}
	for _, p := range []string{debs[0], filepath.Join(c.stateDir, "image", "kernel")} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := cabinv1.NewImagesClient(c.cc).Build(ctx, &cabinv1.BuildImageRequest{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for {
		p, err := stream.Recv()
		if err != nil {
			t.Fatalf("forced image build after steps %q: %v", steps, err)
		}
		steps = append(steps, p.GetStep())
		if p.GetImage() != nil {
			break
		}
	}
	for _, want := range []string{"downloading linux-image-", "extracting vmlinux", "resolving modules", "downloading busybox-static"} {
		if !slices.ContainsFunc(steps, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("the build has no step %q: steps %q", want, steps)
		}
	}

	const name = "cit-confined"
	if _, err := bootVM(ctx, c.cc, name); err != nil {
		t.Fatal(err)
	}
	if out := mustExec(t, c, name, "echo", "hello"); strings.TrimSpace(out) != "hello" {
		t.Errorf("exec: %q", out)
	}
	// The console log, which cabind writes: the agent's line comes
	// after it tells the host, and is copied asynchronously.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(vmLogs(t, c, name), "cabin-agent ready"); {
		if time.Now().After(deadline) {
			t.Fatalf("the console log holds no \"cabin-agent ready\":\n%s", vmLogs(t, c, name))
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.restartDaemon(t, nil)
	if out := mustExec(t, c, name, "true"); out != "" {
		t.Errorf("exec after the restart: %q", out)
	}
	stopVM(t, c, name)
	if err := c.stopDaemon(); err != nil {
		t.Error(err)
	}
	log, err := os.ReadFile(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{[]byte("read-only file system"), []byte("level=ERROR")} {
		if bytes.Contains(log, bad) {
			t.Errorf("the confined cabind's log has %q:\n%s", bad, log)
		}
	}
}

// vmLogs is the console log of the VM name.
func vmLogs(t testing.TB, e *env, name string) string {
	t.Helper()
	resp, err := concierge.NewVmConciergeClient(e.cc).GetVmLogs(testContext(t, 30*time.Second), &concierge.GetVmLogsRequest{Name: name})
	if err != nil {
		t.Fatalf("GetVmLogs %s: %v", name, err)
	}
	return resp.GetLog()
}
