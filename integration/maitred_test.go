package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
)

// TestMaitred calls the shared VM's Maitred and Health services through
// cabind's relay with cabin's generated clients.
func TestMaitred(t *testing.T) {
	e := needEnv(t)
	c := vmtools.NewMaitredClient(e.cc)
	vmCtx := func(t *testing.T) context.Context { return toVM(testContext(t, 30*time.Second), e.shared.name) }

	t.Run("LaunchProcess exited", func(t *testing.T) {
		resp, err := c.LaunchProcess(vmCtx(t), &vmtools.LaunchProcessRequest{
			Argv: []string{"sh", "-c", "exit 5"}, WaitForExit: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != vmtools.ProcessStatus_EXITED || resp.GetCode() != 5 {
			t.Errorf("got %v code %d, want EXITED code 5", resp.GetStatus(), resp.GetCode())
		}
	})

	t.Run("LaunchProcess missing binary", func(t *testing.T) {
		resp, err := c.LaunchProcess(vmCtx(t), &vmtools.LaunchProcessRequest{
			Argv: []string{"/nonexistent/cabin-missing"}, WaitForExit: true,
		})
		if err != nil {
			t.Fatalf("a process that cannot launch is a status, not an RPC error: %v", err)
		}
		if resp.GetStatus() != vmtools.ProcessStatus_FAILED {
			t.Errorf("got %v, want FAILED", resp.GetStatus())
		}
	})

	t.Run("LaunchProcess empty argv", func(t *testing.T) {
		_, err := c.LaunchProcess(vmCtx(t), &vmtools.LaunchProcessRequest{WaitForExit: true})
		wantCode(t, err, codes.InvalidArgument, "argv")
	})

	t.Run("LaunchProcess respawn and wait", func(t *testing.T) {
		_, err := c.LaunchProcess(vmCtx(t), &vmtools.LaunchProcessRequest{
			Argv: []string{"true"}, Respawn: true, WaitForExit: true,
		})
		wantCode(t, err, codes.InvalidArgument)
	})

	t.Run("SetResolvConfig", func(t *testing.T) {
		_, err := c.SetResolvConfig(vmCtx(t), &vmtools.SetResolvConfigRequest{ResolvConfig: &vmtools.ResolvConfig{
			Nameservers:   []string{"192.0.2.53", "2001:db8::53"},
			SearchDomains: []string{"cit.example", "example.org"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		got := mustExec(t, e, e.shared.name, "cat", "/etc/resolv.conf")
		for _, line := range []string{"nameserver 192.0.2.53\n", "nameserver 2001:db8::53\n", "search cit.example example.org\n"} {
			if !strings.Contains(got, line) {
				t.Errorf("/etc/resolv.conf lacks %q:\n%s", line, got)
			}
		}
	})

	t.Run("SetTimezone", func(t *testing.T) {
		// Bring-up gave the guest the host's zone (when the host names
		// one); then a new zone takes effect for the guest's programs.
		if tz := hostZone(); tz != "" {
			if got := mustExec(t, e, e.shared.name, "readlink", "/etc/localtime"); !strings.HasSuffix(strings.TrimSpace(got), "/"+tz) {
				t.Errorf("after bring-up /etc/localtime -> %q, want the host's %s", got, tz)
			}
		}
		if _, err := c.SetTimezone(vmCtx(t), &vmtools.SetTimezoneRequest{TimezoneName: "Asia/Kolkata"}); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(mustExec(t, e, e.shared.name, "date", "+%z")); got != "+0530" {
			t.Errorf("date +%%z in Asia/Kolkata: %q", got)
		}
		_, err := c.SetTimezone(vmCtx(t), &vmtools.SetTimezoneRequest{TimezoneName: "Mars/Olympus_Mons"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("unknown zone: %v", err)
		}
		if _, err := c.SetTimezone(vmCtx(t), &vmtools.SetTimezoneRequest{TimezoneName: "UTC"}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Mount tmpfs", func(t *testing.T) {
		const target = "/mnt/t"
		resp, err := c.Mount(vmCtx(t), &vmtools.MountRequest{
			Source: "tmpfs", Target: target, Fstype: "tmpfs", Options: "size=4m", CreateTarget: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetError() != 0 {
			t.Fatalf("mount error %d", resp.GetError())
		}
		t.Cleanup(func() { mustExec(t, e, e.shared.name, "umount", target) })
		out := mustExec(t, e, e.shared.name, "grep", target, "/proc/mounts")
		if !strings.HasPrefix(out, "tmpfs "+target+" tmpfs ") {
			t.Errorf("/proc/mounts: %q, want a tmpfs on %s", out, target)
		}
		// Mount waits for the late modules, which load in the background
		// after VmReady: once it returns, their filesystems are there.
		fs := mustExec(t, e, e.shared.name, "cat", "/proc/filesystems")
		for _, name := range []string{"ext4", "overlay"} {
			if !strings.Contains(fs, "\t"+name+"\n") {
				t.Errorf("/proc/filesystems after Mount lacks %s (a late module):\n%s", name, fs)
			}
		}
	})

	t.Run("Mount bad fstype", func(t *testing.T) {
		resp, err := c.Mount(vmCtx(t), &vmtools.MountRequest{
			Source: "none", Target: "/mnt/cit-bad", Fstype: "cabin-nosuchfs", CreateTarget: true,
		})
		if err != nil {
			t.Fatalf("a failed mount is an errno in the response, not an RPC error: %v", err)
		}
		if resp.GetError() == 0 {
			t.Error("mounting an unknown filesystem type reported success")
		}
	})

	t.Run("SetTime zero", func(t *testing.T) {
		for _, ts := range []*timestamppb.Timestamp{nil, {}} {
			_, err := c.SetTime(vmCtx(t), &vmtools.SetTimeRequest{Time: ts})
			wantCode(t, err, codes.InvalidArgument, "time")
		}
	})

	t.Run("PrepareToSuspend", func(t *testing.T) {
		if _, err := c.PrepareToSuspend(vmCtx(t), &vmtools.EmptyMessage{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Health", func(t *testing.T) {
		resp, err := kata.NewHealthClient(e.cc).Check(vmCtx(t), &kata.CheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != kata.HealthCheckResponse_SERVING {
			t.Errorf("got %v, want SERVING", resp.GetStatus())
		}
	})
}

// TestRelayedCallsConcurrentAndCut makes many relayed unary calls at once
// while one is blocked in the guest, then cuts the blocked one with its
// deadline: every quick call answers, the blocked one ends
// DeadlineExceeded, and the agent keeps answering.
func TestRelayedCallsConcurrentAndCut(t *testing.T) {
	e := needEnv(t)
	c := vmtools.NewMaitredClient(e.cc)
	ctx := toVM(testContext(t, 60*time.Second), e.shared.name)

	blocked := make(chan error, 1)
	go func() {
		bctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := c.LaunchProcess(bctx, &vmtools.LaunchProcessRequest{
			Argv: []string{"sleep", "30"}, WaitForExit: true,
		})
		blocked <- err
	}()

	want, err := c.GetKernelVersion(ctx, &vmtools.EmptyMessage{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	errs := make(chan error, n)
	for range n {
		go func() {
			got, err := c.GetKernelVersion(ctx, &vmtools.EmptyMessage{})
			if err == nil && got.GetKernelRelease() != want.GetKernelRelease() {
				err = fmt.Errorf("kernel release %q, want %q", got.GetKernelRelease(), want.GetKernelRelease())
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent call: %v", err)
		}
	}
	select {
	case err := <-blocked:
		t.Fatalf("the blocked call ended while the quick ones ran: %v", err)
	default:
	}
	wantCode(t, <-blocked, codes.DeadlineExceeded)
	if _, err := c.GetKernelVersion(ctx, &vmtools.EmptyMessage{}); err != nil {
		t.Errorf("after the cut: %v", err)
	}
}

// hostZone is the host's zone name as cabind reads it, or "".
func hostZone() string {
	if b, err := os.ReadFile("/etc/timezone"); err == nil {
		return strings.TrimSpace(string(b))
	}
	if target, err := os.Readlink("/etc/localtime"); err == nil {
		if _, rest, ok := strings.Cut(target, "zoneinfo/"); ok {
			return rest
		}
	}
	return ""
}
