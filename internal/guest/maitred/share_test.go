package maitred

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cabinvm/cabin/api/vmtools"
)

// mountCall is a mount(2) call.
type mountCall struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// TestMount9P: the share's tag is mounted over virtio-9p on the target,
// which is made. The real 9p needs a VM (integration/maitred2_test.go);
// here a fake mount(2) records the call and mounts a tmpfs in its place.
func TestMount9P(t *testing.T) {
	needRoot(t)
	var calls []mountCall
	fake := func(source, target, fstype string, flags uintptr, data string) error {
		calls = append(calls, mountCall{source, target, fstype, flags, data})
		return unix.Mount("cabin-test", target, "tmpfs", flags, "size=1m")
	}
	_, s := newTest(t, Config{Mount: fake})
	target := filepath.Join(t.TempDir(), "mnt", "shared")
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })

	resp, err := s.Mount9P(context.Background(), &vmtools.Mount9PRequest{Port: 7, Target: target + "/"})
	if err != nil || resp.GetError() != 0 {
		t.Fatalf("Mount9P = %v, %v", resp, err)
	}
	want := mountCall{"cabinShare7", target, "9p", unix.MS_NOSUID | unix.MS_NODEV, "trans=virtio,version=9p2000.L,cache=none,access=any"}
	if len(calls) != 1 || calls[0] != want {
		t.Fatalf("mount calls %+v, want [%+v]", calls, want)
	}
	if n := mountCount(t, target); n != 1 {
		t.Errorf("%d mounts on the target, want 1", n)
	}
	// The tmpfs in the share's place takes the flags: nosuid, nodev.
	var st unix.Statfs_t
	unix.Statfs(target, &st)
	if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Errorf("mounted without nosuid or nodev: flags %#x", st.Flags)
	}
}

// TestMount9PNoShare mounts, for real, a share no device has: the errno
// is in the answer, as Mount reports a failed mount.
func TestMount9PNoShare(t *testing.T) {
	needRoot(t)
	_, s := newTest(t, Config{})
	target := filepath.Join(t.TempDir(), "shared")
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	resp, err := s.Mount9P(context.Background(), &vmtools.Mount9PRequest{Port: 4242, Target: target})
	if err != nil {
		t.Fatalf("a failed mount is an errno in the answer: %v", err)
	}
	// ENOENT: 9p has no such tag; ENODEV: this kernel has no 9p.
	if e := syscall.Errno(resp.GetError()); e != syscall.ENOENT && e != syscall.ENODEV {
		t.Errorf("error %v, want ENOENT (or ENODEV without 9p)", e)
	}
	if st, err := os.Stat(target); err != nil || !st.IsDir() {
		t.Errorf("target not made: %v", err)
	}
}

func TestMount9PRefuses(t *testing.T) {
	called := false
	_, s := newTest(t, Config{Mount: func(string, string, string, uintptr, string) error { called = true; return nil }})
	ctx := context.Background()
	for _, tc := range []struct {
		req     *vmtools.Mount9PRequest
		mention string
	}{
		{&vmtools.Mount9PRequest{Target: "/mnt/shared"}, "port"},
		{&vmtools.Mount9PRequest{Port: 1}, "target"},
		{&vmtools.Mount9PRequest{Port: 1, Target: "/mnt/\x00"}, "target"},
	} {
		_, err := s.Mount9P(ctx, tc.req)
		wantCode(t, err, codes.InvalidArgument, tc.mention)
	}
	dir := t.TempDir()
	for _, target := range []string{"relative", dir + "/a/../b"} {
		resp, err := s.Mount9P(ctx, &vmtools.Mount9PRequest{Port: 1, Target: target})
		if err != nil || syscall.Errno(resp.GetError()) != syscall.EINVAL {
			t.Errorf("target %q: %v, %v; want EINVAL in the answer", target, resp, err)
		}
	}
	if called {
		t.Error("a refused request was mounted")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("refused targets were made: %v", left)
	}
}
