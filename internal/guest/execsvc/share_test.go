package execsvc

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// shareFixture is a share mount point, empty until "mounted", and a
// program link into it at bin/prog, as the guest image makes them.
func shareFixture(t *testing.T) (root, mount, link string) {
	t.Helper()
	root = t.TempDir()
	mount = filepath.Join(root, "share")
	for _, d := range []string{mount, filepath.Join(root, "bin")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link = filepath.Join(root, "bin", "prog")
	if err := os.Symlink(filepath.Join(mount, "usr/bin/prog"), link); err != nil {
		t.Fatal(err)
	}
	return root, mount, link
}

func TestLinksIntoShare(t *testing.T) {
	root, mount, link := shareFixture(t)
	plain := filepath.Join(root, "bin", "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(root, "bin", "elsewhere")
	if err := os.Symlink("/bin/sh", elsewhere); err != nil {
		t.Fatal(err)
	}
	// A name that merely starts like the mount is not in it.
	lookalike := filepath.Join(root, "bin", "lookalike")
	if err := os.Symlink(mount+"x/prog", lookalike); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Join(root, "bin")+":/usr/bin:/bin")
	for _, c := range []struct {
		name string
		want bool
	}{
		{link, true},
		{"prog", true}, // through PATH, dangling as it is
		{plain, false},
		{"plain", false},
		{elsewhere, false},
		{lookalike, false},
		{"sh", false},
		{"no-such-program", false},
		{"", false},
	} {
		if got := linksIntoShare(c.name, mount); got != c.want {
			t.Errorf("linksIntoShare(%q) = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestExecWaitsForTheShare: an Exec of a program that links into the
// share before it is mounted waits for the mount and runs the program;
// one whose share cannot be mounted is refused saying why; other
// programs never wait.
func TestExecWaitsForTheShare(t *testing.T) {
	_, mount, link := shareFixture(t)
	var waits atomic.Int32
	mounted := func(ctx context.Context) error {
		waits.Add(1)
		// "Mounting" makes the link's target appear.
		target := filepath.Join(mount, "usr/bin/prog")
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, []byte("#!/bin/sh\necho from the share\n"), 0o755)
	}
	c := newClientWith(t, Config{WaitShare: mounted, shareMount: mount})
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{link}}))
	wantExit(t, res, 0, 0)
	if got := string(res.stdout); got != "from the share\n" {
		t.Errorf("stdout %q", got)
	}
	if n := waits.Load(); n != 1 {
		t.Errorf("WaitShare called %d times, want 1", n)
	}
	mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"true"}}))
	if n := waits.Load(); n != 1 {
		t.Errorf("an Exec of true waited for the share (%d calls)", n)
	}

	_, mount2, link2 := shareFixture(t)
	failed := func(context.Context) error {
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "the guest image's share cannot be mounted: no 9p")
	}
	c2 := newClientWith(t, Config{WaitShare: failed, shareMount: mount2})
	_, err := run(t, c2, startReq(&execv1.ExecStart{Argv: []string{link2}}))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no 9p") {
		t.Errorf("exec with no share = %v, want FailedPrecondition saying why", err)
	}
}
