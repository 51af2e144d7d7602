package guestimage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

// putRootfs makes dir a generation as far as rootfsComplete can tell.
func putRootfs(t *testing.T, dir string) {
	t.Helper()
	tree := filepath.Join(dir, bootcfg.RootfsBusybox)
	putFile(t, filepath.Join(tree, "bin", "busybox"), "\x7fELF")
	putFile(t, filepath.Join(tree, "etc", "passwd"), rootfsPasswd)
	putFile(t, filepath.Join(dir, bootcfg.SystemDir, filepath.FromSlash(bootcfg.RuntimeBinary)), "\x7fELF")
}

func TestWriteRootfs(t *testing.T) {
	// A umask that would strip every mode Mkdir and WriteFile are given.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)

	dir := t.TempDir()
	bin := filepath.Join(dir, "busybox-src")
	if err := os.WriteFile(bin, []byte("BUSYBOX"), 0o700); err != nil {
		t.Fatal(err)
	}
	gen := filepath.Join(dir, "gen")
	// busybox lists itself, "[" and "[[" among its applets; a name twice
	// must not fail the build.
	applets := []string{"sh", "busybox", "[", "[[", "ls", "init", "false", "sh"}
	if err := writeRootfs(gen, bin, applets); err != nil {
		t.Fatal(err)
	}
	if rootfsComplete(gen) {
		t.Error("rootfsComplete says yes to a generation without its share's files")
	}
	tree := filepath.Join(gen, bootcfg.RootfsBusybox)
	entries, _ := os.ReadDir(gen)
	if len(entries) != 1 || entries[0].Name() != bootcfg.RootfsBusybox {
		t.Errorf("generation holds %v, want only %s", entries, bootcfg.RootfsBusybox)
	}
	for _, d := range []struct {
		name string
		mode fs.FileMode
	}{
		{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"root", 0o700},
		{"run", 0o755}, {"sys", 0o555}, {"tmp", 0o777 | fs.ModeSticky},
	} {
		st, err := os.Lstat(filepath.Join(tree, d.name))
		if err != nil || !st.IsDir() {
			t.Errorf("%s: %v, want a directory", d.name, err)
			continue
		}
		if got := st.Mode() & (fs.ModePerm | fs.ModeSticky); got != d.mode {
			t.Errorf("%s: mode %v, want %v", d.name, got, d.mode)
		}
		if d.name != "bin" && d.name != "etc" {
			if des, _ := os.ReadDir(filepath.Join(tree, d.name)); len(des) != 0 {
				t.Errorf("%s is not empty: %v", d.name, des)
			}
		}
	}
	if st, err := os.Lstat(filepath.Join(tree, "bin", "busybox")); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		t.Errorf("bin/busybox: %v, %v; want a regular file, 0755", st, err)
	}
	if data, _ := os.ReadFile(filepath.Join(tree, "bin", "busybox")); string(data) != "BUSYBOX" {
		t.Errorf("bin/busybox holds %q", data)
	}
	for _, a := range []string{"sh", "[", "[[", "ls", "init", "false"} {
		target, err := os.Readlink(filepath.Join(tree, "bin", a))
		if err != nil || target != "busybox" {
			t.Errorf("bin/%s: link to %q (%v), want the relative link busybox", a, target, err)
		}
	}
	for name, want := range map[string]string{"passwd": rootfsPasswd, "group": rootfsGroup} {
		p := filepath.Join(tree, "etc", name)
		data, err := os.ReadFile(p)
		if err != nil || string(data) != want {
			t.Errorf("etc/%s: %q, %v", name, data, err)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("etc/%s: mode %v, want 0644", name, st.Mode())
		}
	}
	// Every account's shell is an applet of the tree, and its group is
	// there.
	groups := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(rootfsGroup), "\n") {
		groups[strings.Split(l, ":")[2]] = true
	}
	for _, l := range strings.Split(strings.TrimSpace(rootfsPasswd), "\n") {
		f := strings.Split(l, ":")
		if len(f) != 7 {
			t.Fatalf("passwd line %q: %d fields", l, len(f))
		}
		if _, err := os.Lstat(filepath.Join(tree, f[6])); err != nil {
			t.Errorf("%s's shell %s is not in the tree", f[0], f[6])
		}
		if !groups[f[3]] {
			t.Errorf("%s's group %s is not in etc/group", f[0], f[3])
		}
	}

	// Into an existing directory: refused, nothing changed.
	if err := writeRootfs(gen, bin, applets); err == nil {
		t.Error("writeRootfs over an existing generation succeeded")
	}
	for _, bad := range []string{"../escape", "a/b", "..", "", "x y"} {
		if err := writeRootfs(filepath.Join(t.TempDir(), "gen"), bin, []string{"sh", bad}); err == nil {
			t.Errorf("applet %q accepted", bad)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "escape")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an applet name left the tree: %v", err)
	}
}

var (
	fakeBusyboxOnce sync.Once
	fakeBusyboxDir  string
	fakeBusyboxErr  error
)

// fakeBusyboxDeb writes a busybox-static .deb at version into dir and
// returns its path: a static Go program that lists a few applets for
// --list, packaged by dpkg-deb. Skips without dpkg-deb.
func fakeBusyboxDeb(t *testing.T, dir string, p pkgRef) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg-deb")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain on PATH to build a fake busybox")
	}
	fakeBusyboxOnce.Do(func() {
		d, err := os.MkdirTemp("", "cabin-busybox-test")
		if err != nil {
			fakeBusyboxErr = err
			return
		}
		testTempDirs = append(testTempDirs, d)
		src := "package main\n\nimport (\"fmt\"; \"os\")\n\nfunc main() {\n" +
			"\tif len(os.Args) > 1 && os.Args[1] == \"--list\" { fmt.Println(\"[\\nbusybox\\nfalse\\nls\\nsh\"); return }\n" +
			"\tfmt.Println(\"fake busybox\")\n}\n"
		for name, text := range map[string]string{"go.mod": "module fakebusybox\n\ngo 1.21\n", "main.go": src} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(text), 0o644); err != nil {
				fakeBusyboxErr = err
				return
			}
		}
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(d, "busybox"), ".")
		cmd.Dir = d
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOTOOLCHAIN=local", "GOWORK=off")
		if msg, err := cmd.CombinedOutput(); err != nil {
			fakeBusyboxErr = &buildError{err, string(msg)}
			return
		}
		fakeBusyboxDir = d
	})
	if fakeBusyboxErr != nil {
		t.Fatalf("build fake busybox: %v", fakeBusyboxErr)
	}
	pkg := t.TempDir()
	control := fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: cabin tests <test@example.com>\nDescription: fake\n", p.Name, p.Version)
	putFile(t, filepath.Join(pkg, "DEBIAN", "control"), control)
	data, err := os.ReadFile(filepath.Join(fakeBusyboxDir, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(pkg, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, debFileName(p))
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	return deb
}

// TestRootfsGenerations builds generations for successive inputs and
// checks that one in place is never changed, and that prune removes one
// only when no manifest or VM needs it.
func TestRootfsGenerations(t *testing.T) {
	root := statedirtest.New(t)
	var inUse []string
	var inUseErr error
	b := &Builder{Root: root, Log: testLogger(t), InUse: func() ([]string, error) { return inUse, inUseErr }}
	if err := os.MkdirAll(b.rootfsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	in := testInputs(t)
	kernel := pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"}
	// A generation's name, for a runtime of version v.
	gen := func(v string) string { return rootfsKey(testUserland(), sha256Hex(v), kernel, in.late) }
	var steps []string
	step := b.reporter(func(p Progress) { steps = append(steps, p.Step) })

	name1 := gen("1")
	built, err := b.ensureRootfs(name1, in, step)
	if err != nil {
		t.Fatal(err)
	}
	dir1 := root.RootfsDir(name1)
	if !built || !rootfsComplete(dir1) {
		t.Fatalf("first ensureRootfs: built=%v complete=%v", built, rootfsComplete(dir1))
	}
	for _, a := range []string{"sh", "ls", "["} {
		if target, err := os.Readlink(filepath.Join(dir1, bootcfg.RootfsBusybox, "bin", a)); err != nil || target != "busybox" {
			t.Errorf("applet %s: %q, %v", a, target, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir1, bootcfg.SystemDir, "usr", "bin", "cabin-runtime")); err != nil || string(got) != "RUNTIME" {
		t.Errorf("the generation's runtime: %q, %v", got, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(b.rootfsDir(), ".*")); len(leftovers) > 0 {
		t.Errorf("work files left: %q", leftovers)
	}
	ino := func(p string) uint64 {
		t.Helper()
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	rt1 := filepath.Join(dir1, bootcfg.SystemDir, "usr", "bin", "cabin-runtime")
	before := ino(rt1)

	// Again: nothing built, nothing touched.
	steps = nil
	if built, err := b.ensureRootfs(name1, in, step); err != nil || built || len(steps) > 0 {
		t.Errorf("second ensureRootfs: built=%v %v, steps %q", built, err, steps)
	}
	if ino(rt1) != before {
		t.Error("ensureRootfs replaced a generation in place")
	}

	// A new runtime: a new generation; the old one as it was.
	name2 := gen("2")
	if built, err := b.ensureRootfs(name2, in, step); err != nil || !built || name2 == name1 {
		t.Fatalf("ensureRootfs for a new runtime: built=%v %v", built, err)
	}
	if ino(rt1) != before || !rootfsComplete(dir1) {
		t.Error("a new generation changed the old one")
	}

	m := func(name string) *manifest { return &manifest{RootfsDir: name} }
	// The previous generation stays with its manifest.
	b.prune(m(name2), m(name1))
	if !rootfsComplete(dir1) || !rootfsComplete(root.RootfsDir(name2)) {
		t.Fatal("prune removed the current or previous generation")
	}
	name3 := gen("3")
	if _, err := b.ensureRootfs(name3, in, step); err != nil {
		t.Fatal(err)
	}
	// Neither manifest names the first one, but a VM uses it.
	inUse = []string{dir1, "/elsewhere/" + name1}
	b.prune(m(name3), m(name2))
	if !rootfsComplete(dir1) {
		t.Fatal("prune removed a generation a VM uses")
	}
	// Which VMs use what cannot be told: all stay.
	inUse, inUseErr = nil, errors.New("records unreadable")
	b.prune(m(name3), m(name2))
	if !rootfsComplete(dir1) {
		t.Fatal("prune removed a generation while InUse failed")
	}
	// No VM uses it any more: it goes; the work files of other builds
	// are not prune's to remove.
	inUseErr = nil
	hidden := filepath.Join(b.rootfsDir(), buildPrefix+"x")
	os.Mkdir(hidden, 0o755)
	b.prune(m(name3), m(name2))
	if _, err := os.Lstat(dir1); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an unused generation was kept: %v", err)
	}
	if !rootfsComplete(root.RootfsDir(name2)) || !rootfsComplete(root.RootfsDir(name3)) {
		t.Error("prune removed the current or previous generation")
	}
	if _, err := os.Lstat(hidden); err != nil {
		t.Errorf("prune removed a work directory: %v", err)
	}
	// Under the lock, a dead build's work directory goes.
	b.removeLeftovers()
	if _, err := os.Lstat(hidden); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("leftover work directory kept: %v", err)
	}

	// A generation damaged from outside (its share's runtime gone) is
	// built again.
	dir3 := root.RootfsDir(name3)
	if err := os.Remove(filepath.Join(dir3, bootcfg.SystemDir, "usr", "bin", "cabin-runtime")); err != nil {
		t.Fatal(err)
	}
	if rootfsComplete(dir3) {
		t.Error("a generation without its runtime counts as complete")
	}
	if built, err := b.ensureRootfs(name3, in, step); err != nil || !built || !rootfsComplete(dir3) {
		t.Errorf("ensureRootfs over a damaged generation: built=%v %v complete=%v", built, err, rootfsComplete(dir3))
	}

	// A name that is not a generation's builds nothing.
	if _, err := b.ensureRootfs("../../etc", in, step); err == nil {
		t.Error("ensureRootfs accepted a name that is not a digest")
	}
}

// TestRootfsForOwnKernel: a VM booting its own kernel gets the cached
// image's root filesystems without apt being asked, even when its lists
// changed, and without the binaries being checked.
func TestRootfsForOwnKernel(t *testing.T) {
	f := newUpdateFixture(t)
	f.apt.cand.Kernel = pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	f.aptUpdate(t)
	f.b.AgentBinary = "/nonexistent/cabin-agent"
	dir, err := f.b.Rootfs(context.Background(), nil)
	if err != nil || dir != f.img.Rootfs {
		t.Fatalf("Rootfs = %q, %v; want the cached %q", dir, err, f.img.Rootfs)
	}
	if f.apt.lookups != 0 || len(f.apt.downloads) != 0 {
		t.Errorf("Rootfs asked apt: %d lookups, downloads %v", f.apt.lookups, f.apt.downloads)
	}

	// Without them, the image is ensured, which fails for a missing agent
	// with the agent's error.
	if err := os.RemoveAll(f.img.Rootfs); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.Rootfs(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "agent binary") {
		t.Errorf("Rootfs without generation or agent: %v, want the agent's error", err)
	}
}

// checkDebianRootfs checks the generation built from Debian's
// busybox-static: what a container sees.
func checkDebianRootfs(t *testing.T, dir string) {
	t.Helper()
	if !rootfsComplete(dir) {
		t.Fatalf("%s is not a complete generation", dir)
	}
	tree := filepath.Join(dir, bootcfg.RootfsBusybox)
	bins, err := os.ReadDir(filepath.Join(tree, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range bins {
		names = append(names, e.Name())
		if e.Name() == "busybox" {
			continue
		}
		if target, err := os.Readlink(filepath.Join(tree, "bin", e.Name())); err != nil || target != "busybox" {
			t.Errorf("bin/%s: %q, %v; want a link to busybox", e.Name(), target, err)
		}
	}
	for _, a := range []string{"sh", "ls", "cat", "mount", "false", "["} {
		if !slices.Contains(names, a) {
			t.Errorf("bin/ lacks the applet %s", a)
		}
	}
	t.Logf("busybox tree: %d entries in bin/", len(names))
	// Debian's busybox, run through an applet's link as a container
	// would.
	out, err := exec.Command(filepath.Join(tree, "bin", "sh"), "-c", "echo ok").Output()
	if err != nil || string(out) != "ok\n" {
		t.Errorf("bin/sh -c 'echo ok': %q, %v", out, err)
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "root", "run", "etc"} {
		if st, err := os.Lstat(filepath.Join(tree, d)); err != nil || !st.IsDir() {
			t.Errorf("%s: %v, want a directory", d, err)
		}
	}
}
