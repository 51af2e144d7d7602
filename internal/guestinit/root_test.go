package guestinit

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// childEnv names the directory a re-executed test binary runs
// TestLeaveRootChild in, in a mount namespace of its own.
const childEnv = "CABIN_GUESTINIT_ROOT_CHILD"

// TestLeaveRoot runs leaveRoot in a child process with a tmpfs for its
// root, standing in for the initramfs: it moves its own root, so it runs
// in a mount namespace of its own.
func TestLeaveRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	for _, c := range []string{"moves", "rolls back"} {
		t.Run(c, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestLeaveRootChild$", "-test.v")
			cmd.Env = append(os.Environ(), childEnv+"="+c+":"+t.TempDir())
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestLeaveRootChild") {
				t.Fatalf("child: %v\n%s", err, out)
			}
		})
	}
}

func TestLeaveRootChild(t *testing.T) {
	arg, ok := os.LookupEnv(childEnv)
	if !ok {
		t.Skip("run by TestLeaveRoot")
	}
	c, dir, _ := strings.Cut(arg, ":")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("make mounts private", unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""))
	must("mount the stand-in", unix.Mount("cabin-test-root", dir, "tmpfs", 0, "mode=1777"))
	must("populate", os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755))
	must("populate", os.WriteFile(filepath.Join(dir, "usr/bin/tool"), []byte("tool"), 0o755))
	must("populate", os.WriteFile(filepath.Join(dir, "init"), []byte("agent"), 0o755))
	must("populate", os.Mkdir(filepath.Join(dir, "tmp"), 0o1777))
	if c == "rolls back" {
		// A mount point cannot be renamed: leaveRoot fails after moving
		// the entries before it, and must put them back.
		must("populate", os.Mkdir(filepath.Join(dir, "zz"), 0o755))
		must("mount on zz", unix.Mount("cabin-test-zz", filepath.Join(dir, "zz"), "tmpfs", 0, ""))
	}
	outside, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	must("open the stand-in", err)
	must("chroot", unix.Chroot(dir))
	must("chdir", os.Chdir("/"))
	before := names(t, "/")

	err = leaveRoot()
	if c == "rolls back" {
		if !errors.Is(err, unix.EBUSY) {
			t.Fatalf("leaveRoot with a mount point in /: %v; want EBUSY", err)
		}
		if got := names(t, "/"); !slices.Equal(got, before) {
			t.Fatalf("after the failure / holds %q; want %q as before", got, before)
		}
		return
	}
	must("leaveRoot", err)

	// The new root shows the same files, writable.
	if got := names(t, "/"); !slices.Equal(got, before) {
		t.Errorf("new root holds %q; want %q", got, before)
	}
	if b, err := os.ReadFile("/usr/bin/tool"); err != nil || string(b) != "tool" {
		t.Errorf("/usr/bin/tool in the new root: %q, %v", b, err)
	}
	must("write in the new root", os.WriteFile("/new", nil, 0o644))
	if fi, err := os.Stat("/"); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("new root's mode: %v, %v; want 0755", fi, err)
	}

	// Below the new root, seen from outside as a process entering its
	// mount namespace's root would see it (in the guest the rootfs is that
	// root; here the stand-in has a parent): the old root, read-only, with
	// nothing in it but RootDir, covered and empty.
	if got := namesAt(t, outside, "."); !slices.Equal(got, []string{filepath.Base(RootDir)}) {
		t.Errorf("below the new root: %q; want only %s", got, RootDir)
	}
	if got := namesAt(t, outside, "."+RootDir); len(got) != 0 {
		t.Errorf("%s below the new root holds %q; want it empty", RootDir, got)
	}
	if err := unix.Mkdirat(outside, "planted", 0o755); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing below the new root: %v; want EROFS", err)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range es {
		ns = append(ns, e.Name())
	}
	return ns
}

// namesAt lists the directory at path relative to the directory fd dirfd.
func namesAt(t *testing.T, dirfd int, path string) []string {
	t.Helper()
	fd, err := unix.Openat(dirfd, path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	ns, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ns)
	return ns
}
