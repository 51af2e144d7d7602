package integration

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/emptypb"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// guestClock reads the guest's uptime (a clock that stands still while
// its vCPUs are stopped) and wall clock, in seconds.
func guestClock(t *testing.T, e *env, vm string) (uptime, wall float64) {
	t.Helper()
	f := strings.Fields(mustExec(t, e, vm, "sh", "-c", `cut -d' ' -f1 /proc/uptime; date +%s`))
	if len(f) != 2 {
		t.Fatalf("guest clocks: %q", f)
	}
	uptime, err1 := strconv.ParseFloat(f[0], 64)
	wall, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("guest clocks: %q", f)
	}
	return uptime, wall
}

// cabinState is the VM's state as cabin.v1 reports it.
func cabinState(t *testing.T, e *env, vm string) cabinv1.VmState {
	t.Helper()
	v, err := cabinv1.NewVmsClient(e.cc).GetVm(testContext(t, 15*time.Second), &cabinv1.GetVmRequest{Name: vm})
	if err != nil {
		t.Fatalf("GetVm %s: %v", vm, err)
	}
	return v.GetState()
}

// cpuCgroupDir is the directory of pid's cgroup in the host's cpu
// hierarchy, or "" when it is in the hierarchy's root (no cgroups here).
func cpuCgroupDir(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var rel, mount string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && (slices.Contains(strings.Split(f[1], ","), "cpu") || f[1] == "") {
			if f[1] != "" || rel == "" {
				rel = f[2]
			}
		}
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	s := bufio.NewScanner(mi)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 3 {
			continue
		}
		if qf[0] == "cgroup" && slices.Contains(strings.Split(qf[2], ","), "cpu") {
			mount = pf[4]
		}
	}
	if rel == "" || rel == "/" || mount == "" {
		return ""
	}
	return filepath.Join(mount, rel)
}

// TestSuspendResumeRealVM suspends and resumes a VM of its own: its
// clock stands still meanwhile and is set again after; a restarted
// cabind finds it suspended; a stop of a suspended VM finishes; QEMU
// killed while suspended is a VmStoppedSignal VM_EXITED with its cgroup
// gone, and the name starts again. It restarts cabind, so it does not
// run in parallel.
func TestSuspendResumeRealVM(t *testing.T) {
	e := needEnv(t)
	const name = "cit-suspend"
	vm := bootOwnVM(t, e, name)
	c := concierge.NewVmConciergeClient(e.cc)
	ctx := testContext(t, 5*bootTimeout)

	up0, _ := guestClock(t, e, name)
	host0 := time.Now()
	for i := 0; i < 2; i++ {
		r, err := c.SuspendVm(ctx, &concierge.SuspendVmRequest{Name: name})
		if err != nil || !r.GetSuccess() {
			t.Fatalf("SuspendVm #%d: %v, %v", i+1, r, err)
		}
	}
	if s := cabinState(t, e, name); s != cabinv1.VmState_VM_STATE_SUSPENDED {
		t.Errorf("cabin.v1 state of a suspended VM: %v", s)
	}
	if st := vmInfo(t, e, name).GetVmInfo().GetStatus(); st != concierge.VmStatus_VM_STATUS_RUNNING {
		t.Errorf("concierge status of a suspended VM: %v, want RUNNING as upstream", st)
	}
	r, err := c.GetVmEnterpriseReportingInfo(ctx, &concierge.GetVmEnterpriseReportingInfoRequest{VmName: name})
	if err != nil || r.GetSuccess() || !strings.Contains(r.GetFailureReason(), "suspended") {
		t.Errorf("a call into a suspended guest: %v, %v", r, err)
	}

	// A restarted cabind asks QEMU, and finds it suspended.
	e.restartDaemon(t, func() { time.Sleep(3 * time.Second) })
	// The restart made a new connection.
	c = concierge.NewVmConciergeClient(e.cc)
	if s := cabinState(t, e, name); s != cabinv1.VmState_VM_STATE_SUSPENDED {
		t.Fatalf("after a cabind restart: %v, want SUSPENDED", s)
	}
	if res, err := c.ResumeVm(ctx, &concierge.ResumeVmRequest{Name: name}); err != nil || !res.GetSuccess() {
		t.Fatalf("ResumeVm: %v, %v", res, err)
	}
	up1, wall := guestClock(t, e, name)
	hostElapsed := time.Since(host0).Seconds()
	// The guest's uptime stood still for the 3 s cabind was down, at
	// least; its wall clock was set from the host's on resume.
	if up1-up0 > hostElapsed-2 {
		t.Errorf("guest uptime advanced %.1f s in %.1f s of host time: it did not stand still while suspended", up1-up0, hostElapsed)
	}
	if d := wall - float64(time.Now().Unix()); d < -2 || d > 2 {
		t.Errorf("guest wall clock %.0f s off the host's after resume: not set", d)
	}
	if s := cabinState(t, e, name); s != cabinv1.VmState_VM_STATE_RUNNING {
		t.Errorf("after ResumeVm: %v", s)
	}

	// A suspended VM stops: resumed first, its guest shuts down.
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if r, err := c.SuspendVm(ctx, &concierge.SuspendVmRequest{Name: name}); err != nil || !r.GetSuccess() {
		t.Fatalf("SuspendVm: %v, %v", r, err)
	}
	if r, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: name}); err != nil || !r.GetSuccess() {
		t.Fatalf("StopVm of a suspended VM: %v, %v", r, err)
	}
	ev, err := w.next(30*time.Second, isStopped)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetVmStopped().GetReason(); got != concierge.VmStopReason_STOP_VM_REQUESTED {
		t.Errorf("stop reason %v", got)
	}
	if !waitGone(vm.pid, 10*time.Second) {
		t.Errorf("QEMU %d still there after StopVm", vm.pid)
	}

	// QEMU killed while suspended.
	vm = bootOwnVM(t, e, name)
	cg := cpuCgroupDir(t, vm.pid)
	if r, err := c.SuspendVm(ctx, &concierge.SuspendVmRequest{Name: name}); err != nil || !r.GetSuccess() {
		t.Fatalf("SuspendVm: %v, %v", r, err)
	}
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev, err = w.next(30*time.Second, isStopped)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetVmStopped().GetReason(); got != concierge.VmStopReason_VM_EXITED {
		t.Errorf("stop reason of a VM killed while suspended: %v, want VM_EXITED", got)
	}
	if cg == "" {
		t.Log("QEMU ran in the cpu hierarchy's root: no cgroup to check")
	} else if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Errorf("the VM's cgroup %s is still there: %v", cg, err)
	}
	// The name starts again.
	bootOwnVM(t, e, name)
}

// TestKillDuringStop: QEMU SIGKILLed while its VM is stopping ends the
// stop with success and a VmStoppedSignal that says it was asked for;
// the name starts again.
func TestKillDuringStop(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	const name = "cit-stopkill"
	vm := bootOwnVM(t, e, name)
	ctx := testContext(t, 2*bootTimeout)
	w, err := watchEvents(ctx, e.cc, name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	c := concierge.NewVmConciergeClient(e.cc)
	type result struct {
		r   *concierge.SuccessFailureResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.StopVm(ctx, &concierge.StopVmRequest{Name: name})
		done <- result{r, err}
	}()
	if _, err := w.next(30*time.Second, func(ev *cabinv1.Event) bool { return ev.GetVmStopping() != nil }); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || !res.r.GetSuccess() {
		t.Errorf("StopVm with QEMU killed midway: %v, %v", res.r, res.err)
	}
	ev, err := w.next(30*time.Second, isStopped)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetVmStopped().GetReason(); got != concierge.VmStopReason_STOP_VM_REQUESTED {
		t.Errorf("stop reason %v", got)
	}
	bootOwnVM(t, e, name)
}

// TestConciergeVMCalls makes the VM calls of concierge on a VM of its
// own and checks each effect in the guest or on the host.
func TestConciergeVMCalls(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	const name = "cit-calls"
	bootOwnVM(t, e, name)
	c := concierge.NewVmConciergeClient(e.cc)
	ctx := testContext(t, 2*bootTimeout)

	// The kernel the guest runs, as uname says in it.
	r, err := c.GetVmEnterpriseReportingInfo(ctx, &concierge.GetVmEnterpriseReportingInfoRequest{VmName: name})
	if err != nil || !r.GetSuccess() {
		t.Fatalf("GetVmEnterpriseReportingInfo: %v, %v", r, err)
	}
	if want := strings.TrimSpace(mustExec(t, e, name, "sh", "-c", "echo $(uname -r) $(uname -v)")); r.GetVmKernelVersion() != want {
		t.Errorf("kernel version %q, the guest says %q", r.GetVmKernelVersion(), want)
	}

	// A user made in the guest, in a group; then one whose uid is taken.
	mustExec(t, e, name, "sh", "-c", "grep -q '^staff:' /etc/group 2>/dev/null || echo staff:x:50: >>/etc/group")
	uid := uint32(1234)
	u, err := c.SetUpVmUser(ctx, &concierge.SetUpVmUserRequest{VmName: name, Username: "alice", Uid: &uid, GroupNames: []string{"staff"}})
	if err != nil || !u.GetSuccess() || u.GetUsername() != "alice" {
		t.Fatalf("SetUpVmUser: %v, %v", u, err)
	}
	if got := strings.TrimSpace(mustExec(t, e, name, "sh", "-c", "id -u alice; id -Gn alice")); !strings.HasPrefix(got, "1234\n") || !strings.Contains(got, "staff") {
		t.Errorf("alice in the guest: %q", got)
	}
	u, err = c.SetUpVmUser(ctx, &concierge.SetUpVmUserRequest{VmName: name, Username: "bob", Uid: &uid})
	if err != nil || u.GetSuccess() || u.GetUsername() != "alice" {
		t.Errorf("SetUpVmUser with alice's uid: %v, %v", u, err)
	}
	_, err = c.SetUpVmUser(ctx, &concierge.SetUpVmUserRequest{VmName: name, Username: "x; reboot"})
	wantCode(t, err, codes.InvalidArgument, "username")
	u, err = c.SetUpVmUser(ctx, &concierge.SetUpVmUserRequest{VmName: name, Username: "carol", GroupNames: []string{"nosuchgroup"}})
	if status.Code(err) != codes.InvalidArgument && (err != nil || u.GetSuccess()) {
		t.Errorf("SetUpVmUser in a group the guest has not: %v, %v", u, err)
	}

	// The clocks of every VM are set: this one's and the shared one's.
	s, err := c.SyncVmTimes(ctx, &emptypb.Empty{})
	if err != nil || s.GetRequests() < 2 {
		t.Errorf("SyncVmTimes: %v, %v", s, err)
	}

	// A GPU cache directory of the VM's own, cabind's only.
	g, err := c.GetVmGpuCachePath(ctx, &concierge.GetVmGpuCachePathRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(g.GetPath()); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 || !strings.HasPrefix(g.GetPath(), e.stateDir+"/") {
		t.Errorf("GPU cache %s: %v, %v", g.GetPath(), st, err)
	}

	if a, err := c.GetVmLaunchAllowed(ctx, &concierge.GetVmLaunchAllowedRequest{}); err != nil || !a.GetAllowed() {
		t.Errorf("GetVmLaunchAllowed: %v, %v", a, err)
	}
}

// TestEveryConciergeMethodThroughCabind walks VmConcierge's descriptor
// through cabind, with a VM of its own named in each request: none
// answers UNIMPLEMENTED. The stops are left out (StopAllVms would stop
// every test's VMs); their own tests call them.
func TestEveryConciergeMethodThroughCabind(t *testing.T) {
	e := needEnv(t)
	t.Parallel()
	const name = "cit-walk"
	bootOwnVM(t, e, name)
	sd, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(concierge.VmConcierge_ServiceDesc.ServiceName))
	if err != nil {
		t.Fatal(err)
	}
	skip := []string{"StopAllVms", "StopVm", "StopVmWithoutOwnerId"}
	var mds []protoreflect.MethodDescriptor
	methods := sd.(protoreflect.ServiceDescriptor).Methods()
	for i := 0; i < methods.Len(); i++ {
		if md := methods.Get(i); !slices.Contains(skip, string(md.Name())) {
			mds = append(mds, md)
		}
	}
	// DestroyDiskImage stops the VM whose disk it destroys: last, so
	// that the calls before it act on a running VM.
	slices.SortStableFunc(mds, func(a, b protoreflect.MethodDescriptor) int {
		return cmpBool(a.Name() == "DestroyDiskImage", b.Name() == "DestroyDiskImage")
	})
	for _, md := range mds {
		req := dynamicpb.NewMessage(md.Input())
		for _, f := range []protoreflect.Name{"name", "vm_name"} {
			if fd := md.Input().Fields().ByName(f); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
				req.Set(fd, protoreflect.ValueOfString(name))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := e.cc.Invoke(ctx, "/"+string(sd.FullName())+"/"+string(md.Name()), req, dynamicpb.NewMessage(md.Output()))
		cancel()
		switch status.Code(err) {
		case codes.Unimplemented:
			t.Errorf("%s answers UNIMPLEMENTED: %v", md.Name(), err)
		case codes.DeadlineExceeded:
			t.Errorf("%s hung: %v", md.Name(), err)
		default:
			t.Logf("%s: %v", md.Name(), status.Code(err))
		}
	}
}

// cmpBool orders false before true.
func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
