package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

func startingUp(name, owner string, cid int64) *cabinv1.Event {
	return &cabinv1.Event{Time: timestamppb.Now(), Signal: &cabinv1.Event_VmStartingUp{
		VmStartingUp: &concierge.VmStartingUpSignal{Name: name, OwnerId: owner, Cid: cid}}}
}

func started(name, owner string, pid int32, cid int64) *cabinv1.Event {
	return &cabinv1.Event{Time: timestamppb.Now(), Signal: &cabinv1.Event_VmStarted{
		VmStarted: &concierge.VmStartedSignal{Name: name, OwnerId: owner, Status: concierge.VmStatus_VM_STATUS_RUNNING,
			VmInfo: &concierge.VmInfo{Pid: pid, Cid: cid, Status: concierge.VmStatus_VM_STATUS_RUNNING}}}}
}

func stopped(name, owner string, cid int64) *cabinv1.Event {
	return &cabinv1.Event{Time: timestamppb.Now(), Signal: &cabinv1.Event_VmStopped{
		VmStopped: &concierge.VmStoppedSignal{Name: name, OwnerId: owner, Cid: cid, Reason: concierge.VmStopReason_VM_EXITED}}}
}

func startingResponse(cid int64) *concierge.StartVmResponse {
	return &concierge.StartVmResponse{Success: true, Status: concierge.VmStatus_VM_STATUS_STARTING,
		VmInfo: &concierge.VmInfo{Pid: 4242, Cid: cid, Status: concierge.VmStatus_VM_STATUS_STARTING}}
}

func TestVMStartWaitsForStartedEvent(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(req *cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		// Published before StartVm answers: cabin must already be
		// subscribed, and must skip events about other VMs.
		d.events.publish(
			startingUp("web", "alice", 33),
			started("web", "bob", 1, 34),
			started("db", "alice", 2, 35),
			started("web", "alice", 4242, 33),
		)
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "--owner", "alice", "vm", "start", "web",
		"--cpus", "2", "--memory", "512", "--kernel", "boot/vmlinux", "--initrd", "/srv/initrd.img", "--timeout", "30", "--accel", "tcg", "--net", "user")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "started web (pid 4242, cid 33) in ") {
		t.Errorf("stdout = %q, want the started summary", r.stdout)
	}
	// Not a terminal: one plain progress line per event of this VM.
	if !strings.Contains(r.stderr, "s  booting (pid 4242, cid 33)\n") ||
		!strings.Contains(r.stderr, "s  starting_up cid=33 owner=alice\n") {
		t.Errorf("stderr = %q, want a progress line for starting_up", r.stderr)
	}

	calls := d.vms.calls()
	if len(calls) != 1 {
		t.Fatalf("StartVm called %d times", len(calls))
	}
	req := calls[0]
	wd, _ := os.Getwd()
	if got, want := req.GetKernelPath(), filepath.Join(wd, "boot/vmlinux"); got != want {
		t.Errorf("kernel_path = %q, want %q (made absolute for the daemon)", got, want)
	}
	if req.GetInitrdPath() != "/srv/initrd.img" || req.GetMemoryMib() != 512 ||
		req.GetRequest().GetCpus() != 2 || req.GetRequest().GetTimeout() != 30 ||
		req.GetRequest().GetName() != "web" || req.GetRequest().GetOwnerId() != "alice" ||
		req.GetAccelerator() != cabinv1.Accelerator_ACCELERATOR_TCG || req.GetNetwork() != cabinv1.Network_NETWORK_USER {
		t.Errorf("StartVm request = %v", req)
	}
	w := d.events.watchRequests()
	if len(w) != 1 || w[0].GetVmName() != "web" || w[0].GetOwnerId() != "alice" {
		t.Errorf("Watch requests = %v, want one for web of alice", w)
	}
}

func TestVMStartWithoutSubscriptionHeader(t *testing.T) {
	d := startDaemon(t)
	d.events.noHeader = true
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	// cabin must not wait for headers that come only with an event the
	// start would cause: it goes ahead after subscribeWait.
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "started web (pid 4242, cid 33)") {
		t.Errorf("got %+v", r)
	}
}

func TestVMStartFailsWhenStoppedFirst(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(startingUp("web", "", 33), stopped("web", "", 33), started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
	if !strings.Contains(r.stderr, "cabin: web stopped before it was up: vm_exited; see `cabin vm logs web`") {
		t.Errorf("stderr = %q", r.stderr)
	}
	// With cabind's reason in words, that is what the user reads.
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		ev := stopped("web", "", 33)
		ev.Detail = "the guest agent did not report within the start timeout (1s); stopping the VM"
		d.events.publish(startingUp("web", "", 33), ev)
		return startingResponse(33), nil
	}
	r = d.run(t, nil, "vm", "start", "web")
	if want := "cabin: web stopped before it was up: the guest agent did not report within the start timeout (1s); stopping the VM; see `cabin vm logs web`"; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr = %q; want %q", r.code, r.stderr, want)
	}
}

func TestVMStartNoWaitReturnsAtOnce(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		return startingResponse(33), nil // and no events, ever
	}
	began := time.Now()
	r := d.run(t, nil, "vm", "start", "--no-wait", "web")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("--no-wait took %s", took)
	}
	if r.stdout != "web is starting (pid 4242, cid 33)\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	if w := d.events.watchRequests(); len(w) != 0 {
		t.Errorf("--no-wait watched events: %v", w)
	}
}

func TestVMStartAlreadyRunning(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		return &concierge.StartVmResponse{Success: true, Status: concierge.VmStatus_VM_STATUS_RUNNING,
			VmInfo: &concierge.VmInfo{Pid: 7, Cid: 32}}, nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 0 || r.stdout != "web is already running (pid 7, cid 32)\n" {
		t.Errorf("got %+v", r)
	}
}

func TestVMStartFailureReason(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		return &concierge.StartVmResponse{Success: false, FailureReason: "disk image is busy",
			Status: concierge.VmStatus_VM_STATUS_DISK_OP_IN_PROGRESS}, nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 1 || r.stderr != "cabin: start web: disk image is busy\n" {
		t.Errorf("got %+v", r)
	}
}

func TestVMStartShowsInvalidArgument(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		return nil, status.Error(codes.InvalidArgument, "memory_mib: must be at least 64")
	}
	r := d.run(t, nil, "vm", "start", "web", "--memory", "1")
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1", r.code)
	}
	if r.stderr != "cabin: start web: memory_mib: must be at least 64\n" {
		t.Errorf("stderr = %q, want the daemon's message without gRPC's framing", r.stderr)
	}
}

func TestVMStartEventStreamEnds(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.endStreams()
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 1 || !strings.Contains(r.stderr, "cabin: waiting for web to start: the daemon closed the event stream") {
		t.Errorf("got %+v", r)
	}
}

func TestVMStartUsageErrors(t *testing.T) {
	d := startDaemon(t)
	for _, args := range [][]string{
		{"vm", "start"},
		{"vm", "start", "a", "b"},
		{"vm", "start", "web", "--cpus", "-1"},
		{"vm", "start", "web", "--memory", "-5"},
		{"vm", "start", "web", "--timeout", "-1"},
		{"vm", "start", "web", "--cpus", "two"},
		{"vm", "start", "web", "--accel", "hvf"},
		{"vm", "start", "web", "--accel", ""},
		{"vm", "start", "web", "--net", "bridge"},
	} {
		r := d.run(t, nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "Run 'cabin vm start --help' for usage.") {
			t.Errorf("%q: got %+v, want a usage error", args, r)
		}
	}
	if n := len(d.vms.calls()); n != 0 {
		t.Errorf("StartVm called %d times on bad input", n)
	}
}

func TestStartDeadline(t *testing.T) {
	if got := startDeadline(0); got != defaultStartTimeout+startMargin {
		t.Errorf("startDeadline(0) = %s", got)
	}
	if got := startDeadline(5); got != 5*time.Second+startMargin {
		t.Errorf("startDeadline(5) = %s", got)
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine("web", 2345*time.Millisecond, "starting_up cid=33", 0)
	if got != "starting web  2.3s  starting_up cid=33" {
		t.Errorf("progressLine = %q", got)
	}
	// Never as wide as the terminal, or it would wrap and \r could not
	// redraw it.
	if got := progressLine("web", time.Second, "starting_up cid=33", 20); got != "starting web  1.0s " {
		t.Errorf("progressLine cut to 20 = %q", got)
	}
}

func TestVMStartProgressOnTerminal(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	var screen syncBuffer
	go io.Copy(&screen, ptmx)

	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(startingUp("web", "", 33))
		go func() {
			// Long enough for a redraw or two with the event shown.
			time.Sleep(300 * time.Millisecond)
			d.events.publish(started("web", "", 4242, 33))
		}()
		return startingResponse(33), nil
	}
	var stdout syncBuffer
	code := run(t.Context(), []string{"--socket", d.socket, "vm", "start", "web"},
		strings.NewReader(""), &stdout, tty, func(string) string { return "" })
	if code != 0 || !strings.HasPrefix(stdout.String(), "started web") {
		t.Fatalf("exit code %d, stdout %q", code, stdout.String())
	}
	// The line is redrawn in place and cleared at the end, so the summary
	// starts on a clean line.
	deadline := time.Now().Add(2 * time.Second)
	for !strings.HasSuffix(screen.String(), "starting_up cid=33\r\x1b[K") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := screen.String()
	if !strings.HasPrefix(got, "\r\x1b[Kstarting web  0.0s  asking cabind") ||
		!strings.HasSuffix(got, "starting_up cid=33\r\x1b[K") || strings.Contains(got, "\n") {
		t.Errorf("terminal got %q", got)
	}
}

func TestWaitStartedTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := waitStarted(ctx, nil, "web", "", make(chan watchResult))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waitStarted = %v, want the deadline", err)
	}
}

func TestVMStartEnsuresImageFirst(t *testing.T) {
	d := startDaemon(t)
	var (
		mu    sync.Mutex
		order []string
	)
	record := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, s)
	}
	d.images.build = func(req *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
		record("build")
		if !req.GetEnsure() || req.GetForce() {
			return status.Errorf(codes.InvalidArgument, "request %v, want ensure only", req)
		}
		// A cold build may outlast the start deadline (--timeout 1: 16 s),
		// so it must not be under it; the test's own is 20 s.
		if dl, ok := stream.Context().Deadline(); ok && time.Until(dl) < startDeadline(1)+time.Second {
			return status.Errorf(codes.InvalidArgument, "the build has only %s, the start deadline", time.Until(dl).Round(time.Second))
		}
		for _, step := range []string{"checking apt for the guest kernel", "building the initramfs"} {
			if err := stream.Send(&cabinv1.BuildImageProgress{Step: step}); err != nil {
				return err
			}
		}
		return stream.Send(&cabinv1.BuildImageProgress{Step: "done", Image: &cabinv1.ImageInfo{
			KernelVersion: "6.1.0-56-amd64 (6.1.192-2)", Built: true}})
	}
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		record("start")
		d.events.publish(started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "vm", "start", "--timeout", "1", "web")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	mu.Lock()
	if got := strings.Join(order, ","); got != "build,start" {
		t.Errorf("calls %q, want the image ensured before StartVm", got)
	}
	mu.Unlock()
	for _, want := range []string{
		"s  guest image: checking apt for the guest kernel\n",
		"s  guest image: building the initramfs\n",
		"s  guest image built: kernel 6.1.0-56-amd64 (6.1.192-2)\n",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr = %q, want a progress line ending %q", r.stderr, want)
		}
	}
	if strings.Contains(r.stderr, "done") {
		t.Errorf("stderr = %q: the final step is shown as the image line, not as done", r.stderr)
	}
}

func TestVMStartCachedImageIsQuiet(t *testing.T) {
	d := startDaemon(t)
	d.images.build = func(_ *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
		return stream.Send(&cabinv1.BuildImageProgress{Step: "done", Image: &cabinv1.ImageInfo{KernelVersion: "6.1.0-56-amd64"}})
	}
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 0 || strings.Contains(r.stderr, "image") {
		t.Errorf("got %+v, want no image line for a cached image", r)
	}
}

func TestVMStartSkipsImageWithNoWaitOrKernel(t *testing.T) {
	d := startDaemon(t)
	var builds atomic.Int32
	d.images.build = func(*cabinv1.BuildImageRequest, cabinv1.Images_BuildServer) error {
		builds.Add(1)
		return status.Error(codes.Internal, "not expected")
	}
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	for _, args := range [][]string{
		// --no-wait: StartVm builds it; cabin does not wait for it.
		{"vm", "start", "--no-wait", "web"},
		// The user's kernel: the daemon does not use the image.
		{"vm", "start", "--kernel", "/srv/vmlinux", "web"},
	} {
		if r := d.run(t, nil, args...); r.code != 0 {
			t.Errorf("%q: got %+v", args, r)
		}
	}
	if n := builds.Load(); n != 0 {
		t.Errorf("the image was ensured %d times", n)
	}
	if n := len(d.vms.calls()); n != 2 {
		t.Errorf("StartVm called %d times, want 2", n)
	}
}

// An older cabind has no Images.Build: StartVm builds the image, as before.
func TestVMStartWithoutImagesService(t *testing.T) {
	d := startDaemon(t)
	d.vms.startVM = func(*cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		d.events.publish(started("web", "", 4242, 33))
		return startingResponse(33), nil
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "started web") {
		t.Errorf("got %+v", r)
	}
	if n := len(d.vms.calls()); n != 1 {
		t.Errorf("StartVm called %d times, want 1", n)
	}
}

func TestVMStartImageFails(t *testing.T) {
	d := startDaemon(t)
	d.images.build = func(_ *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
		stream.Send(&cabinv1.BuildImageProgress{Step: "downloading linux-image-amd64"})
		return status.Error(codes.Internal, "guest kernel: apt-get download failed")
	}
	r := d.run(t, nil, "vm", "start", "web")
	if r.code != 1 || !strings.HasSuffix(r.stderr, "cabin: start web: guest image: guest kernel: apt-get download failed\n") {
		t.Errorf("got %+v", r)
	}
	if n := len(d.vms.calls()); n != 0 {
		t.Errorf("StartVm called %d times after the image failed", n)
	}
}
