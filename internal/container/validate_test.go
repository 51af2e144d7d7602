package container

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/runc/libcontainer/seccomp"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/container/runtimebuild"
	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestCheckID(t *testing.T) {
	for _, id := range []string{"a", "A-b_c.d", "0", strings.Repeat("x", 64), "a..b", "a-"} {
		if err := checkID(id); err != nil {
			t.Errorf("checkID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../x", "a/b", ".a", "-a", "a+b", "a b", "é", "a\x00", strings.Repeat("x", 65)} {
		err := checkID(id)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("checkID(%q) = %v, want invalid", id, err)
		}
	}
}

func TestCheckPath(t *testing.T) {
	for _, p := range []string{"/", "/run/cabin/x"} {
		if err := checkPath("--x", p); err != nil {
			t.Errorf("checkPath(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "x", "./x", "/a/../b", "/a/", "/a//b", "/a/\x00"} {
		if err := checkPath("--x", p); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "--x") {
			t.Errorf("checkPath(%q) = %v, want an invalid-argument error naming --x", p, err)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for s, want := range map[string]unix.Signal{
		"9": unix.SIGKILL, "KILL": unix.SIGKILL, "SIGKILL": unix.SIGKILL, "term": unix.SIGTERM,
		"SigUsr1": unix.SIGUSR1, "64": unix.Signal(64), "1": unix.SIGHUP,
	} {
		got, err := ParseSignal(s)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-9", "65", "SIG", "NOPE", "SIGRTMIN+1", "9x"} {
		if _, err := ParseSignal(s); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseSignal(%q): %v, want invalid", s, err)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int
	}{
		{nil, 0},
		{errors.New("boom"), 1},
		{fmt.Errorf("create: %w", invalidf("--bundle: %w", errors.New("x"))), 2},
		{Invalid(errors.New("usage")), 2},
		{notFound("a"), 3},
		{exists("a"), 4},
	} {
		if got := ExitCode(c.err); got != c.code {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
	// The category does not show in the message; the cause stays reachable.
	cause := errors.New("cause")
	err := invalidf("--x: %w", cause)
	if err.Error() != "--x: cause" || !errors.Is(err, cause) {
		t.Errorf("invalidf: %q, is cause %t", err, errors.Is(err, cause))
	}
}

func TestRootHasParent(t *testing.T) {
	rootfs := &mountinfo.Info{ID: 1, Parent: 1, Mountpoint: "/", FSType: "rootfs"}
	proc := &mountinfo.Info{ID: 21, Parent: 1, Mountpoint: "/proc", FSType: "proc"}
	// What the guest's agent stacks on the rootfs at boot.
	stacked := &mountinfo.Info{ID: 40, Parent: 1, Root: "/.cabin-root", Mountpoint: "/", FSType: "rootfs"}
	disk := &mountinfo.Info{ID: 25, Parent: 1, Mountpoint: "/", FSType: "ext4"}
	for _, c := range []struct {
		ms   []*mountinfo.Info
		want bool
	}{
		{[]*mountinfo.Info{rootfs, proc}, false},
		{[]*mountinfo.Info{rootfs, stacked, proc}, true},
		{[]*mountinfo.Info{disk}, true},
		{[]*mountinfo.Info{proc}, false},
		{nil, false},
	} {
		if got := rootHasParent(c.ms); got != c.want {
			t.Errorf("rootHasParent(%v) = %t, want %t", c.ms, got, c.want)
		}
	}
}

func TestCheckSeccomp(t *testing.T) {
	for _, s := range []*specs.LinuxSeccomp{nil, {}} {
		if err := checkSeccomp(s); err != nil {
			t.Errorf("checkSeccomp(%+v): %v", s, err)
		}
	}
	filters := []*specs.LinuxSeccomp{
		{DefaultAction: specs.ActErrno},
		{Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActAllow}}},
		{Flags: []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog}},
	}
	for _, s := range filters {
		// Built with libseccomp, a filter is the kernel's business;
		// without, it is refused up front.
		err := checkSeccomp(s)
		if seccomp.Enabled && err != nil || !seccomp.Enabled && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("checkSeccomp(%+v) with libseccomp %t: %v", s, seccomp.Enabled, err)
		}
	}
}

// TestMakefileBuildsRuntime: the Makefile builds cabin-runtime as
// runtimebuild.Tags and runtimebuild.LDFlags say, as the tests do.
func TestMakefileBuildsRuntime(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mk), "\n") {
		if !strings.Contains(line, "./cmd/cabin-runtime") {
			continue
		}
		// The Makefile puts its own LDFLAGS (the version) amid ours.
		for _, want := range []string{`-tags "` + runtimebuild.Tags + `"`, `-ldflags "-s -w `, ` -extldflags -static"`} {
			if !strings.Contains(line, want) {
				t.Errorf("the Makefile builds cabin-runtime without %s:\n%s\nwant -tags %q and -ldflags %q", want, line, runtimebuild.Tags, runtimebuild.LDFlags)
			}
		}
		return
	}
	t.Error("the Makefile does not build ./cmd/cabin-runtime")
}
