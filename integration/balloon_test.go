package integration

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

const mib = 1 << 20

// guestMeminfo reads the VM's /proc/meminfo, in bytes.
func guestMeminfo(t *testing.T, e *env, vm string) map[string]int64 {
	t.Helper()
	out := mustExec(t, e, vm, "cat", "/proc/meminfo")
	m := map[string]int64{}
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		m[k] = n
	}
	if m["MemTotal"] == 0 {
		t.Fatalf("guest meminfo without MemTotal: %q", out)
	}
	return m
}

// qemuPSS is the proportional set size of process pid, in bytes.
func qemuPSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatalf("no Pss in smaps_rollup of %d", pid)
	return 0
}

func balloonInfo(t *testing.T, e *env, vm string) *concierge.BalloonInfo {
	t.Helper()
	resp, err := concierge.NewVmConciergeClient(e.cc).GetBalloonInfo(testContext(t, 30*time.Second), &concierge.GetBalloonInfoRequest{Name: vm})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("GetBalloonInfo %s: %v, %v", vm, resp, err)
	}
	return resp.GetBalloonInfo()
}

func adjustBalloon(t *testing.T, e *env, vm string, size int64) (*concierge.SuccessFailureResponse, error) {
	t.Helper()
	return concierge.NewVmConciergeClient(e.cc).AdjustVm(testContext(t, 30*time.Second), &concierge.AdjustVmRequest{
		Name: vm, Operation: "balloon", Params: []string{strconv.FormatInt(size, 10)},
	})
}

// waitBalloon waits, boundedly, until the VM's balloon holds at least
// (grow) or at most (!grow) size bytes.
func waitBalloonSize(t *testing.T, e *env, vm string, size int64, grow bool) *concierge.BalloonInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		bi := balloonInfo(t, e, vm)
		if (grow && bi.GetBalloonSize() >= size) || (!grow && bi.GetBalloonSize() <= size) {
			return bi
		}
		if time.Now().After(deadline) {
			t.Fatalf("balloon of %s at %d MiB, never reached %d MiB", vm, bi.GetBalloonSize()/mib, size/mib)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func near(a, b, tolerance int64) bool { return a-b <= tolerance && b-a <= tolerance }

// TestBalloon drives a VM's balloon through concierge and checks each
// effect in the guest and on the host.
func TestBalloon(t *testing.T) {
	e := needEnv(t)
	const vm = "cit-balloon"
	ref := bootOwnVM(t, e, vm)

	t.Run("driver and free page reporting", func(t *testing.T) {
		// A late module of Debian's kernel, which the agent loads once it
		// serves; built into cabin's minimal kernel.
		deadline := time.Now().Add(30 * time.Second)
		for {
			// The device bound to the driver: a virtioN link in its directory.
			drv := mustExec(t, e, vm, "sh", "-c", "ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep '^virtio[0-9]'; true")
			if strings.HasPrefix(drv, "virtio") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("virtio_balloon has no device in the guest: %q", drv)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// The device offered free page reporting and the driver took it
		// (VIRTIO_BALLOON_F_REPORTING is feature bit 5).
		feats := strings.TrimSpace(mustExec(t, e, vm, "sh", "-c", "cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features"))
		if len(feats) < 6 || feats[5] != '1' {
			t.Errorf("balloon features %q: free page reporting (bit 5) not negotiated", feats)
		}
		// deflate-on-oom is bit 2.
		if len(feats) < 3 || feats[2] != '1' {
			t.Errorf("balloon features %q: deflate-on-oom (bit 2) not negotiated", feats)
		}
	})

	t.Run("stats are the guest's", func(t *testing.T) {
		bi := balloonInfo(t, e, vm)
		mi := guestMeminfo(t, e, vm)
		if bi.GetBalloonSize() != 0 {
			t.Errorf("balloon of a new VM holds %d bytes", bi.GetBalloonSize())
		}
		// Each read is a moment apart, and the exec in between costs
		// the guest a little.
		if !near(bi.GetAvailableMemory(), mi["MemAvailable"], 32*mib) {
			t.Errorf("available %d MiB, guest's MemAvailable %d MiB", bi.GetAvailableMemory()/mib, mi["MemAvailable"]/mib)
		}
		if !near(bi.GetFreeMemory(), mi["MemFree"], 32*mib) {
			t.Errorf("free %d MiB, guest's MemFree %d MiB", bi.GetFreeMemory()/mib, mi["MemFree"]/mib)
		}
	})

	t.Run("inflate and deflate", func(t *testing.T) {
		before := guestMeminfo(t, e, vm)
		if resp, err := adjustBalloon(t, e, vm, 200*mib); err != nil || !resp.GetSuccess() {
			t.Fatalf("balloon 200 MiB: %v, %v", resp, err)
		}
		waitBalloonSize(t, e, vm, 200*mib, true)
		inflated := guestMeminfo(t, e, vm)
		if drop := before["MemFree"] - inflated["MemFree"]; drop < 150*mib {
			t.Errorf("guest's MemFree dropped by %d MiB with 200 MiB in the balloon", drop/mib)
		}
		if drop := before["MemAvailable"] - inflated["MemAvailable"]; drop < 150*mib {
			t.Errorf("guest's MemAvailable dropped by %d MiB with 200 MiB in the balloon", drop/mib)
		}
		if resp, err := adjustBalloon(t, e, vm, 0); err != nil || !resp.GetSuccess() {
			t.Fatalf("balloon 0: %v, %v", resp, err)
		}
		waitBalloonSize(t, e, vm, 0, false)
		after := guestMeminfo(t, e, vm)
		if !near(after["MemFree"], before["MemFree"], 48*mib) {
			t.Errorf("guest's MemFree %d MiB after deflating, %d before", after["MemFree"]/mib, before["MemFree"]/mib)
		}
	})

	t.Run("cli", func(t *testing.T) {
		if r := cabinCLI(t, e, "vm", "adjust", vm, "memsize", "400"); r.code != 0 || r.stdout != vm+": memsize 400\n" {
			t.Fatalf("vm adjust memsize: %v", r)
		}
		waitBalloonSize(t, e, vm, 112*mib, true)
		r := cabinCLI(t, e, "vm", "balloon", vm)
		if r.code != 0 || !strings.Contains(r.stdout, "balloon    112 MiB") {
			t.Errorf("vm balloon: %v", r)
		}
		r = cabinCLI(t, e, "vm", "info", vm)
		if r.code != 0 || !strings.Contains(r.stdout, "BALLOON") || !strings.Contains(r.stdout, "\n112 MiB") {
			t.Errorf("vm info: %v", r)
		}
		if r := cabinCLI(t, e, "vm", "balloon", vm, "--target", "0"); r.code != 0 {
			t.Fatalf("vm balloon --target 0: %v", r)
		}
		waitBalloonSize(t, e, vm, 0, false)
		if r := cabinCLI(t, e, "vm", "balloon", vm, "--target", "1G"); r.code == 0 || !strings.Contains(r.stderr, "params[0]") {
			t.Errorf("vm balloon --target 1G: %v", r)
		}
	})

	t.Run("target above the guest's memory", func(t *testing.T) {
		before := balloonInfo(t, e, vm).GetBalloonSize()
		for _, size := range []int64{512 * mib, 1 << 40, 449 * mib} {
			_, err := adjustBalloon(t, e, vm, size)
			wantCode(t, err, codes.InvalidArgument, "params[0]")
		}
		_, err := concierge.NewVmConciergeClient(e.cc).AdjustVm(testContext(t, 30*time.Second), &concierge.AdjustVmRequest{
			Name: vm, Operation: "memsize", Params: []string{"513"},
		})
		wantCode(t, err, codes.InvalidArgument, "params[0]")
		if after := balloonInfo(t, e, vm).GetBalloonSize(); after != before {
			t.Errorf("balloon moved from %d to %d by refused targets", before, after)
		}
	})

	t.Run("reclaim gives the guest's cache back to the host", func(t *testing.T) {
		// Page cache the guest can drop: a file on an ext4 in a loop
		// device (the image, in the guest's tmpfs, stays).
		mustExec(t, e, vm, "sh", "-c", "dd if=/dev/zero of=/tmp/bl.img bs=1M count=0 seek=160 2>/dev/null && "+
			"mkfs.ext4 -q -F /tmp/bl.img && mkdir -p /mnt/bl && mount -o loop /tmp/bl.img /mnt/bl && "+
			"dd if=/dev/zero of=/mnt/bl/f bs=1M count=100 2>/dev/null && sync")
		t.Cleanup(func() {
			execArgs(testContext(t, 30*time.Second), e.cc, vm, "sh", "-c", "umount /mnt/bl; rm -f /tmp/bl.img")
		})
		cached := guestMeminfo(t, e, vm)["Cached"]
		before := qemuPSS(t, ref.pid)
		resp, err := concierge.NewVmConciergeClient(e.cc).ReclaimVmMemory(testContext(t, 120*time.Second), &concierge.ReclaimVmMemoryRequest{Name: vm})
		if err != nil || !resp.GetSuccess() {
			t.Fatalf("ReclaimVmMemory: %v, %v", resp, err)
		}
		after := qemuPSS(t, ref.pid)
		t.Logf("qemu pss %d MiB before the reclaim, %d MiB after; guest cache was %d MiB", before/mib, after/mib, cached/mib)
		if before-after < 50*mib {
			t.Errorf("qemu's pss fell by %d MiB (from %d MiB), want at least 50 of the 100 MiB cached", (before-after)/mib, before/mib)
		}
		if now := guestMeminfo(t, e, vm)["Cached"]; cached-now < 80*mib {
			t.Errorf("guest's cache %d MiB after the reclaim, %d before", now/mib, cached/mib)
		}
		// The balloon is back where it was: the guest keeps its memory.
		if bi := balloonInfo(t, e, vm); bi.GetBalloonSize() > 8*mib {
			t.Errorf("balloon holds %d MiB after the reclaim", bi.GetBalloonSize()/mib)
		}
	})
}

// TestBalloonKilled kills a VM's QEMU while the balloon timer runs and
// its aggressive balloon inflates: the VM is reported stopped, nothing
// of it runs on, and a VM of the same name starts and balloons anew.
func TestBalloonKilled(t *testing.T) {
	e := needEnv(t)
	const vm = "cit-balloon-kill"
	ref := bootOwnVM(t, e, vm)
	c := concierge.NewVmConciergeClient(e.cc)
	ctx := testContext(t, 5*time.Minute)
	if resp, err := c.SetBalloonTimer(ctx, &concierge.SetBalloonTimerRequest{TimerIntervalMillis: 500}); err != nil || !resp.GetSuccess() {
		t.Fatalf("SetBalloonTimer: %v, %v", resp, err)
	}
	// The timer moves every VM's balloon: off again, whatever happens.
	t.Cleanup(func() {
		c.SetBalloonTimer(testContext(t, 30*time.Second), &concierge.SetBalloonTimerRequest{})
	})
	if resp, err := c.AggressiveBalloon(ctx, &concierge.AggressiveBalloonRequest{Name: vm, Enable: true}); err != nil || !resp.GetSuccess() {
		t.Fatalf("AggressiveBalloon: %v, %v", resp, err)
	}
	waitBalloonSize(t, e, vm, 32*mib, true)

	w, err := watchEvents(ctx, e.cc, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := syscall.Kill(ref.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev, err := w.next(30*time.Second, func(ev *cabinv1.Event) bool { return ev.GetVmStopped() != nil })
	if err != nil {
		t.Fatalf("no VmStopped after SIGKILL: %v (%s)", err, w.summary())
	}
	if r := ev.GetVmStopped().GetReason(); r != concierge.VmStopReason_VM_EXITED {
		t.Errorf("stop reason %v, want VM_EXITED", r)
	}
	if !waitGone(ref.pid, 10*time.Second) {
		t.Fatalf("qemu %d still runs", ref.pid)
	}
	// The VM is gone for the memory calls, at once.
	if resp, err := c.GetBalloonInfo(ctx, &concierge.GetBalloonInfoRequest{Name: vm}); err != nil || resp.GetSuccess() {
		t.Errorf("GetBalloonInfo of the killed VM: %v, %v", resp, err)
	}
	if resp, err := c.AggressiveBalloon(ctx, &concierge.AggressiveBalloonRequest{Name: vm}); err != nil || resp.GetSuccess() {
		t.Errorf("AggressiveBalloon of the killed VM: %v, %v", resp, err)
	}

	// A new VM of the name, under the same timer, with no aggressive
	// balloon of its predecessor's.
	ref2, err := bootVM(ctx, e.cc, vm)
	if err != nil {
		t.Fatal(err)
	}
	if ref2.pid == ref.pid {
		t.Fatalf("same pid %d", ref.pid)
	}
	bi := balloonInfo(t, e, vm)
	if bi.GetAvailableMemory() == 0 {
		t.Errorf("new VM's balloon info %v", bi)
	}
	// The timer keeps a 512 MiB guest's 64 MiB reserve available: it
	// inflates the new guest's balloon, which an aggressive one would
	// take below that.
	waitBalloonSize(t, e, vm, 64*mib, true)
	time.Sleep(2 * time.Second)
	if bi := balloonInfo(t, e, vm); bi.GetAvailableMemory() < 40*mib {
		t.Errorf("new VM keeps %d MiB available: an aggressive balloon carried over?", bi.GetAvailableMemory()/mib)
	}
	if resp, err := c.SetBalloonTimer(ctx, &concierge.SetBalloonTimerRequest{}); err != nil || !resp.GetSuccess() {
		t.Fatalf("SetBalloonTimer off: %v, %v", resp, err)
	}
	if resp, err := adjustBalloon(t, e, vm, 0); err != nil || !resp.GetSuccess() {
		t.Fatalf("balloon 0: %v, %v", resp, err)
	}
	waitBalloonSize(t, e, vm, 0, false)
}
