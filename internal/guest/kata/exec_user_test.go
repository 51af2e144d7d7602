package kata

import (
	"errors"
	"os"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// TestResolveExecUser: an exec'd process's user name is looked up in the
// files of the root its container's init sees (here this test's own,
// through /proc/PID/root), and the name is not passed on.
func TestResolveExecUser(t *testing.T) {
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Skip("no /etc/passwd here")
	}
	proc := &specs.Process{User: specs.User{UID: 7, GID: 7, Username: "root"}, Env: []string{"PATH=/bin"}}
	if err := resolveExecUser(os.Getpid(), proc); err != nil {
		t.Fatal(err)
	}
	if proc.User.UID != 0 || proc.User.GID != 0 || proc.User.Username != "" || !slices.Contains(proc.Env, "HOME=/root") {
		t.Errorf("process after resolving root: %+v", proc)
	}

	// No name: nothing changes.
	numeric := &specs.Process{User: specs.User{UID: 1000, GID: 1000}}
	if err := resolveExecUser(os.Getpid(), numeric); err != nil || numeric.User.UID != 1000 || len(numeric.Env) != 0 {
		t.Errorf("a numeric user: %+v, %v", numeric, err)
	}

	bad := &specs.Process{User: specs.User{Username: "cit-no-such-user"}}
	if err := resolveExecUser(os.Getpid(), bad); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("an unknown name: %v, want NotFound naming it", err)
	}
	gone := &specs.Process{User: specs.User{Username: "root"}}
	if err := resolveExecUser(1<<30, gone); err == nil {
		t.Errorf("a container whose init is gone: no error")
	}
}
