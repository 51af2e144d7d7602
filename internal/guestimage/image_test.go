package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

func TestKernelFromDepends(t *testing.T) {
	for _, tc := range []struct {
		depends string
		want    pkgRef
		err     string
	}{
		{"linux-image-6.1.0-56-amd64 (= 6.1.192-2)", pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"}, ""},
		{"initramfs-tools, linux-image-6.12.9+bpo-amd64 (= 6.12.9-1~bpo12+1) | linux-image-foo", pkgRef{"linux-image-6.12.9+bpo-amd64", "6.12.9-1~bpo12+1"}, ""},
		{"linux-image-6.1.0-56-amd64", pkgRef{}, "exact version"},
		{"linux-image-../../etc (= 1)", pkgRef{}, "unexpected form"},
		{"linux-image-6.1.0-56-amd64 (= -o/tmp)", pkgRef{}, "unexpected form"},
		{"linux-image-6.1.0-56-AMD64 (= 1)", pkgRef{}, "unexpected form"},
		{"libc6", pkgRef{}, "no linux-image package"},
	} {
		got, err := kernelFromDepends(tc.depends)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.depends, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.depends, got, err, tc.want)
		}
	}
	if rel, err := kernelRelease("linux-image-6.1.0-56-amd64"); err != nil || rel != "6.1.0-56-amd64" {
		t.Errorf("kernelRelease = %q, %v", rel, err)
	}
	for _, bad := range []string{"linux-image-", "linux-image-a/b", "linux-image-1..2", "vmlinuz-6.1"} {
		if _, err := kernelRelease(bad); err == nil {
			t.Errorf("kernelRelease(%q) accepted", bad)
		}
	}
	if n, err := kernelDirName("6.1.0-56-amd64", pkgRef{"linux-image-6.1.0-56-amd64", "1:6.1.192-2"}); err != nil || n != "6.1.0-56-amd64_1%3a6.1.192-2" {
		t.Errorf("kernelDirName = %q, %v", n, err)
	}
}

func TestParseControl(t *testing.T) {
	f := parseControl("Package: linux-image-amd64\nVersion: 6.1.192-2\nDescription: Linux\n more text\nDepends: a (= 1)\n\nPackage: other\nVersion: 9\n")
	if f["Package"] != "linux-image-amd64" || f["Version"] != "6.1.192-2" || f["Depends"] != "a (= 1)" || f["Description"] != "Linux\nmore text" {
		t.Errorf("parsed %q", f)
	}
}

// TestParseStanzas reads apt-cache show's answer for several packages,
// one stanza each.
func TestParseStanzas(t *testing.T) {
	out := "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\n" +
		"Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nTag: admin::recovery,\n use::login\n\n\n" +
		"Package: tzdata\nVersion: 2026f-0+deb12u1\n"
	for _, p := range programPackages {
		out += "\nPackage: " + p + "\nVersion: 1.0-1\n"
	}
	st := parseStanzas(out)
	if len(st) != 3+len(programPackages) || st[0]["Package"] != "linux-image-amd64" || st[1]["Tag"] != "admin::recovery,\nuse::login" || st[2]["Version"] != "2026f-0+deb12u1" {
		t.Fatalf("parsed %q", st)
	}
	recs := map[string]map[string]string{}
	for _, r := range st {
		recs[r["Package"]] = r
	}
	u, err := userlandFromRecords(recs)
	if want := testUserland(); err != nil || !slices.Equal(u, want) {
		t.Errorf("userland %v, %v; want %v", u, err, want)
	}
	delete(recs, tzdataPackage)
	if _, err := userlandFromRecords(recs); err == nil {
		t.Error("userland without tzdata accepted")
	}
}

func TestCacheKey(t *testing.T) {
	kernel := pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"}
	userland := testUserland()
	boot, late := []string{"a.ko"}, []string{"b.ko"}
	agent := digests{agent: strings.Repeat("ab", 32), runtime: strings.Repeat("ef", 32)}
	base := cacheKey(agent, kernel, userland, boot, late)
	if !isHexDigest(base) || cacheKey(agent, kernel, slices.Clone(userland), boot, late) != base {
		t.Fatalf("cache key %q is not a stable digest", base)
	}
	with := func(i int, version string) []pkgRef {
		u := slices.Clone(userland)
		u[i].Version = version
		return u
	}
	for name, key := range map[string]string{
		"tzdata version":   cacheKey(agent, kernel, with(1, "2026g-0+deb12u1"), boot, late),
		"busybox version":  cacheKey(agent, kernel, with(0, "1:1.35.0-4+deb12u2"), boot, late),
		"no tzdata":        cacheKey(agent, kernel, userland[:1], boot, late),
		"kernel version":   cacheKey(agent, pkgRef{kernel.Name, "6.1.192-3"}, userland, boot, late),
		"agent":            cacheKey(digests{strings.Repeat("cd", 32), agent.runtime}, kernel, userland, boot, late),
		"runtime":          cacheKey(digests{agent.agent, strings.Repeat("cd", 32)}, kernel, userland, boot, late),
		"swapped binaries": cacheKey(digests{agent.runtime, agent.agent}, kernel, userland, boot, late),
		"late modules":     cacheKey(agent, kernel, userland, boot, nil),
	} {
		if key == base {
			t.Errorf("cache key unchanged by a new %s", name)
		}
	}
}

// TestCachedManifest checks which manifests Ensure may serve without apt:
// one older code wrote (busybox only, no tzdata) must be rebuilt.
func TestCachedManifest(t *testing.T) {
	root := statedirtest.New(t)
	b := &Builder{Root: root, AgentBinary: staticAgent(t), RuntimeBinary: staticRuntime(t), Log: testLogger(t)}
	sums, err := b.digests()
	if err != nil {
		t.Fatal(err)
	}
	kernel := pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"}
	userland := testUserland()
	current := func(userland []pkgRef) *manifest {
		bb, _ := findPackage(userland, busyboxPackage)
		m := &manifest{
			Format: builderFormat, Kernel: kernel, KernelRelease: "6.1.0-56-amd64", KernelDir: "k",
			Userland: userland, AgentSHA256: sums.agent, RuntimeSHA256: sums.runtime, BootModules: []string{"a.ko"}, InitramfsBytes: 4,
			WantBoot: slices.Clone(bootModuleNames), WantLate: slices.Clone(lateModuleNames),
			RootfsDir: rootfsKey(bb),
		}
		m.Key = cacheKey(sums, kernel, userland, m.BootModules, m.LateModules)
		putRootfs(t, root.RootfsDir(m.RootfsDir))
		os.MkdirAll(root.KernelDir("k"), 0o755)
		os.WriteFile(filepath.Join(root.KernelDir("k"), vmlinuxName), []byte("ELF"), 0o644)
		os.MkdirAll(filepath.Dir(root.Initramfs(m.Key)), 0o755)
		os.WriteFile(root.Initramfs(m.Key), []byte("cpio"), 0o644)
		return m
	}
	if _, ok := b.cached(current(userland), sums); !ok {
		t.Fatal("a current manifest is not served from the cache")
	}
	if _, ok := b.cached(current(userland[:1]), sums); ok {
		t.Error("a manifest without tzdata is served from the cache")
	}
	reversed := slices.Clone(userland)
	slices.Reverse(reversed)
	if _, ok := b.cached(current(reversed), sums); ok {
		t.Error("a manifest listing the packages in another order is served from the cache")
	}

	// The module names asked for changed (cabind was upgraded, the agent
	// was not): the image lacks what is now asked for.
	fewer := current(userland)
	fewer.WantLate = fewer.WantLate[:len(fewer.WantLate)-1]
	if _, ok := b.cached(fewer, sums); ok {
		t.Error("an image built for another list of late modules is served from the cache")
	}
	noNames := current(userland)
	noNames.WantBoot = nil
	if _, ok := b.cached(noNames, sums); ok {
		t.Error("an image whose manifest does not say which modules it was built for is served from the cache")
	}

	// Another runtime: the image carries the old one.
	otherRuntime := sums
	otherRuntime.runtime = strings.Repeat("cd", 32)
	if _, ok := b.cached(current(userland), otherRuntime); ok {
		t.Error("an image built with another runtime is served from the cache")
	}

	// The container root filesystems are gone, or never were (an image
	// from before they were built).
	gone := current(userland)
	if err := os.RemoveAll(root.RootfsDir(gone.RootfsDir)); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.cached(gone, sums); ok {
		t.Error("an image whose container root filesystems are gone is served from the cache")
	}
	none := current(userland)
	none.RootfsDir = ""
	if _, ok := b.cached(none, sums); ok {
		t.Error("an image without container root filesystems is served from the cache")
	}
	// A generation named for another busybox (or a name that is not one).
	for _, name := range []string{rootfsKey(pkgRef{busyboxPackage, "1:1.30.1-1"}), "../../etc"} {
		wrong := current(userland)
		wrong.RootfsDir = name
		if _, ok := b.cached(wrong, sums); ok {
			t.Errorf("an image whose manifest names the generation %q is served from the cache", name)
		}
	}

	// What builder format 2 wrote before cabin-runtime, files and all:
	// not served, so the image is rebuilt with the runtime.
	before := current(userland)
	before.Key = cacheKey(digests{agent: sums.agent}, kernel, userland, before.BootModules, before.LateModules)
	before.RuntimeSHA256, before.RootfsDir = "", ""
	os.WriteFile(root.Initramfs(before.Key), []byte("cpio"), 0o644)
	if _, ok := b.cached(before, sums); ok {
		t.Error("a manifest from before cabin-runtime is served from the cache")
	}

	// What builder format 1 wrote, files and all.
	old := current(nil)
	data, _ := json.Marshal(map[string]any{
		"format": 1, "key": old.Key, "kernel": kernel, "kernelRelease": old.KernelRelease, "kernelDir": "k",
		"busybox": userland[0], "agentSHA256": sums.agent, "initramfsBytes": 4, "bootModules": old.BootModules,
	})
	os.WriteFile(root.ImageManifest(), data, 0o644)
	m, err := b.readManifest()
	if err != nil {
		t.Fatalf("old manifest unreadable: %v", err)
	}
	if _, ok := b.cached(m, sums); ok {
		t.Error("a format 1 manifest is served from the cache")
	}
	m.Format = builderFormat
	if _, ok := b.cached(m, sums); ok {
		t.Error("a manifest without the userland field is served from the cache")
	}
}

// TestPrune keeps the userland packages the current and previous manifests
// name, and removes other packages.
func TestPrune(t *testing.T) {
	root := statedirtest.New(t)
	b := &Builder{Root: root, Log: testLogger(t)}
	os.MkdirAll(root.DownloadsDir(), 0o755)
	bb := func(v string) pkgRef { return pkgRef{busyboxPackage, v} }
	tz := func(v string) pkgRef { return pkgRef{tzdataPackage, v} }
	cur := &manifest{Key: strings.Repeat("1", 64), KernelDir: "k1", Userland: []pkgRef{bb("1:1.36"), tz("2026g")}}
	prev := &manifest{Key: strings.Repeat("2", 64), KernelDir: "k2", Userland: []pkgRef{bb("1:1.35"), tz("2026f")}}
	keep := []string{debFileName(bb("1:1.36")), debFileName(tz("2026g")), debFileName(bb("1:1.35")), debFileName(tz("2026f")), ".download-x"}
	gone := []string{debFileName(tz("2025b")), "busybox-static_1%3a1.34_amd64.deb", "linux-image-6.1.0-56-amd64_6.1.192-2.deb", "dropped_1.deb"}
	for _, n := range append(slices.Clone(keep), gone...) {
		os.WriteFile(filepath.Join(root.DownloadsDir(), n), nil, 0o644)
	}
	b.prune(cur, prev)
	var left []string
	entries, _ := os.ReadDir(root.DownloadsDir())
	for _, e := range entries {
		left = append(left, e.Name())
	}
	slices.Sort(keep)
	if !slices.Equal(left, keep) {
		t.Errorf("downloads after prune: %q, want %q", left, keep)
	}
	// Without a previous manifest only the current packages stay.
	b.prune(cur, nil)
	if _, err := os.Stat(filepath.Join(root.DownloadsDir(), debFileName(tz("2026f")))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("previous tzdata kept without a previous manifest: %v", err)
	}
}

// testLogger logs into the test's output, shown with -v or on failure.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestLockAcrossProcesses holds the image lock as another process would
// (flock on its own open file) and checks a build waits for it, giving up
// with its context.
func TestLockAcrossProcesses(t *testing.T) {
	root := statedirtest.New(t)
	os.MkdirAll(root.ImageDir(), 0o755)
	f, err := os.OpenFile(root.ImageLock(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	b := &Builder{Root: root, AgentBinary: staticAgent(t), RuntimeBinary: staticRuntime(t), Log: testLogger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = b.Ensure(ctx, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ensure under a held lock: %v, want deadline exceeded", err)
	}
	if time.Since(start) < 250*time.Millisecond {
		t.Errorf("Ensure gave up after %v, before its deadline", time.Since(start))
	}
	// Released: the lock is ours again (the build itself may then fail
	// without apt; only the locking is under test).
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	unlock, err := b.lock(context.Background())
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock()
}

func TestEnsureRejectsBadAgent(t *testing.T) {
	root := statedirtest.New(t)
	b := &Builder{Root: root, AgentBinary: "/bin/sh", RuntimeBinary: staticRuntime(t), Log: testLogger(t)}
	if _, err := b.Ensure(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("Ensure with a dynamic agent: %v", err)
	}
	b.AgentBinary = filepath.Join(t.TempDir(), "none")
	if _, err := b.Ensure(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("Ensure with a missing agent: %v", err)
	}
}

// The runtime is checked as the agent is, and errors say which binary
// was wrong.
func TestEnsureRejectsBadRuntime(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	dynamic := filepath.Join(dir, "dynamic")
	os.WriteFile(dynamic, buildELF(elf.ET_EXEC, "/lib64/ld-linux-x86-64.so.2", nil), 0o755)
	missing := filepath.Join(dir, "none")
	for _, tc := range []struct{ runtime, want string }{
		{"", "runtime binary: no path given"},
		{missing, "runtime binary " + missing + ": not found"},
		{script, "runtime binary " + script + ": not an ELF file"},
		{dynamic, "runtime binary " + dynamic + ": dynamically linked (has an ELF interpreter); build it static, with cgo"},
	} {
		b := &Builder{Root: statedirtest.New(t), AgentBinary: staticAgent(t), RuntimeBinary: tc.runtime, Log: testLogger(t)}
		_, err := b.Ensure(context.Background(), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Ensure with runtime %q: %v, want an error containing %q", tc.runtime, err, tc.want)
		}
	}
}

// TestBuildDebian builds the real image from Debian's packages into a
// temporary state dir, then checks the cache answers without apt.
func TestBuildDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads Debian's kernel package (~70 MB); skipped in -short mode")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: this test needs a Debian host with apt", tool)
		}
	}
	agent, runtime := staticAgent(t), staticRuntime(t)
	root := statedirtest.New(t)
	b := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: runtime, Log: testLogger(t)}
	ctx := context.Background()

	var steps []string
	start := time.Now()
	img, err := b.Build(ctx, false, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold build: %v, initramfs %d bytes, kernel %s, steps %q", time.Since(start).Round(time.Millisecond), img.InitramfsBytes, img.KernelVersion, steps)
	if !img.Built {
		t.Error("first build reports Built=false")
	}
	for _, p := range []string{img.Kernel, img.Initramfs, img.Rootfs} {
		if !strings.HasPrefix(p, root.ImageDir()+"/") {
			t.Errorf("%s is outside the image dir", p)
		}
	}
	if err := checkPVH(img.Kernel); err != nil {
		t.Errorf("vmlinux: %v", err)
	}
	if err := CheckKernel(img.Kernel); err != nil {
		t.Errorf("CheckKernel(vmlinux): %v", err)
	}
	if err := CheckInitramfs(img.Initramfs); err != nil {
		t.Errorf("CheckInitramfs: %v", err)
	}
	checkDebianInitramfs(t, img)
	checkDebianRootfs(t, img.Rootfs)

	// The 70 MB kernel package and the unpacked tree are gone; only what
	// the image uses is kept.
	if debs, _ := filepath.Glob(filepath.Join(root.DownloadsDir(), "linux-image-*")); len(debs) > 0 {
		t.Errorf("kernel package kept: %q", debs)
	}
	// The userland packages are kept, one .deb each.
	for _, name := range userlandPackages {
		if debs, _ := filepath.Glob(filepath.Join(root.DownloadsDir(), name+"_*.deb")); len(debs) != 1 {
			t.Errorf("%s: downloads hold %q, want one .deb", name, debs)
		}
	}
	var kept int64
	filepath.Walk(root.ImageDir(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			kept += fi.Size()
		}
		return nil
	})
	t.Logf("image dir holds %d MB", kept>>20)
	if kept > 200<<20 {
		t.Errorf("image dir holds %d MB: the unpacked package was not cleaned up", kept>>20)
	}

	// Nothing changed: Build asks apt (locally) and builds nothing.
	if again, err := b.Build(ctx, false, nil); err != nil || again.Built || again != withBuilt(img, false) {
		t.Errorf("second Build: %+v, %v; want the same image, not built", again, err)
	}
	// Forced: the same inputs give the same bytes.
	sum := fileDigest(t, img.Initramfs)
	if forced, err := b.Build(ctx, true, nil); err != nil || !forced.Built || forced.Initramfs != img.Initramfs {
		t.Errorf("forced Build: %+v, %v", forced, err)
	}
	if fileDigest(t, img.Initramfs) != sum {
		t.Error("forced rebuild from the same inputs changed the initramfs bytes")
	}

	// A new agent: a new initramfs, the same kernel, no kernel download.
	newAgent := filepath.Join(t.TempDir(), "cabin-agent")
	agentBytes, _ := os.ReadFile(agent)
	os.WriteFile(newAgent, append(agentBytes, "trailing bytes change the digest"...), 0o755)
	b2 := &Builder{Root: root, AgentBinary: newAgent, RuntimeBinary: runtime, Log: testLogger(t)}
	steps = nil
	img2, err := b2.Ensure(ctx, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if !img2.Built || img2.Kernel != img.Kernel || img2.Initramfs == img.Initramfs || img2.AgentSHA256 == img.AgentSHA256 ||
		img2.Rootfs != img.Rootfs || img2.RuntimeSHA256 != img.RuntimeSHA256 {
		t.Errorf("after an agent change: %+v (was %+v)", img2, img)
	}
	for _, s := range steps {
		if strings.Contains(s, "linux-image") {
			t.Errorf("agent change downloaded the kernel again: %q", steps)
		}
	}
	// The previous image stays: another process may have just been given it.
	if _, err := os.Stat(img.Initramfs); err != nil {
		t.Errorf("previous initramfs pruned at once: %v", err)
	}
	// A new runtime: a new initramfs as for an agent, the same
	// container root filesystems.
	newRuntime := filepath.Join(t.TempDir(), "cabin-runtime")
	runtimeBytes, _ := os.ReadFile(runtime)
	os.WriteFile(newRuntime, append(runtimeBytes, "more trailing bytes"...), 0o755)
	b4 := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: newRuntime, Log: testLogger(t)}
	img4, err := b4.Ensure(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !img4.Built || img4.Kernel != img.Kernel || img4.Initramfs == img.Initramfs || img4.RuntimeSHA256 == img.RuntimeSHA256 ||
		img4.AgentSHA256 != img.AgentSHA256 || img4.Rootfs != img.Rootfs {
		t.Errorf("after a runtime change: %+v (was %+v)", img4, img)
	}
	// Back to the first agent for the cache checks below.
	if _, err := b.Ensure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	m, err := b.readManifest()
	if err != nil {
		t.Fatal(err)
	}
	if state, err := b.packages().ListsState(); err != nil || m.AptState != state {
		t.Errorf("manifest apt state %q, want the lists' %q (%v)", m.AptState, state, err)
	}

	// The manifest of an image from an older busybox, written before apt
	// states were recorded: Ensure asks apt (for real), and moves to the
	// image of apt's busybox, which is cached.
	current := m.Userland
	m.AptState = ""
	m.Userland = slices.Clone(current)
	m.Userland[0].Version = "1:1.30.1-1"
	m.Key = cacheKey(digests{m.AgentSHA256, m.RuntimeSHA256}, m.Kernel, m.Userland, m.BootModules, m.LateModules)
	if err := os.Link(img.Initramfs, root.Initramfs(m.Key)); err != nil {
		t.Fatal(err)
	}
	// Its generation of the root filesystems, standing in: a link to the
	// current one.
	m.RootfsDir = rootfsKey(m.Userland[0])
	if err := os.Symlink(filepath.Base(img.Rootfs), root.RootfsDir(m.RootfsDir)); err != nil {
		t.Fatal(err)
	}
	if err := b.writeManifest(m); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Ensure(ctx, nil); err != nil || got != withBuilt(img, false) {
		t.Errorf("Ensure behind apt's busybox: %+v, %v; want %+v", got, err, withBuilt(img, false))
	}
	if m, err := b.readManifest(); err != nil || m.AptState == "" || !slices.Equal(m.Userland, current) {
		t.Errorf("manifest after the update: %+v, %v", m, err)
	}

	// A new agent while apt offers a kernel the mirror cannot serve: the
	// image is built for the agent from the last image's packages.
	offline := &fakeApt{hostApt: hostApt{lists: aptListsDir}, cand: candidates{
		Kernel: pkgRef{"linux-image-9.9.9-1-amd64", "9.9.9-1"}, Userland: current,
	}}
	b3 := &Builder{Root: root, AgentBinary: newAgent, RuntimeBinary: runtime, Log: testLogger(t), apt: offline}
	if got, err := b3.Ensure(ctx, nil); err != nil || !got.Built || got.Kernel != img.Kernel || got.AgentSHA256 != img2.AgentSHA256 {
		t.Errorf("Ensure for a new agent, mirror down: %+v, %v; want an image of the cached kernel for the new agent", got, err)
	}
	if len(offline.downloads) != 1 || offline.downloads[0] != offline.cand.Kernel {
		t.Errorf("downloads %v, want one try of %s", offline.downloads, offline.cand.Kernel)
	}
	// Back to the first agent, with apt.
	if _, err := b.Ensure(ctx, nil); err != nil {
		t.Fatal(err)
	}

	// Cached: no apt at all (PATH has none of its tools), twice at once.
	t.Setenv("PATH", t.TempDir())
	var wg sync.WaitGroup
	results := make([]Image, 2)
	errs := make([]error, 2)
	start = time.Now()
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = b.Ensure(ctx, nil)
		}()
	}
	wg.Wait()
	t.Logf("cached Ensure (two at once): %v", time.Since(start).Round(time.Millisecond))
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("cached Ensure: %v", errs[i])
		}
		if results[i].Built {
			t.Error("cached Ensure reports Built=true")
		}
		if want := withBuilt(img, false); results[i] != want {
			t.Errorf("cached Ensure = %+v, want %+v", results[i], want)
		}
	}

	// Another process's Builder on the same state dir sees the same cache.
	other := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: runtime, Log: testLogger(t)}
	if got, err := other.Ensure(ctx, nil); err != nil || got.Built || got.Initramfs != img.Initramfs {
		t.Errorf("second builder: %+v, %v", got, err)
	}
}

// checkDebianInitramfs checks the initramfs built from Debian's packages.
func checkDebianInitramfs(t *testing.T, img Image) {
	t.Helper()
	data, err := os.ReadFile(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readCPIO(data)
	if err != nil {
		t.Fatalf("initramfs does not parse: %v", err)
	}
	get := func(name string) (cpioEntry, bool) { return findEntry(entries, strings.TrimPrefix(name, "/")) }
	agent, _ := os.ReadFile(staticAgent(t))
	if e, ok := get(bootcfg.Init); !ok || e.typ() != cpioTypeReg || string(e.Data) != string(agent) {
		t.Errorf("/init is not the agent")
	}
	runtime, _ := os.ReadFile(staticRuntime(t))
	if e, ok := get(bootcfg.RuntimeBinary); !ok || e.typ() != cpioTypeReg || string(e.Data) != string(runtime) || e.Mode&0o777 != 0o755 {
		t.Errorf("%s is not the runtime, mode 0755", bootcfg.RuntimeBinary)
	}
	if e, ok := get(bootcfg.Busybox); !ok || e.typ() != cpioTypeReg || len(e.Data) < 500_000 {
		t.Errorf("busybox missing or too small")
	}
	if e, ok := get("/bin/sh"); !ok || e.typ() != cpioTypeLink || string(e.Data) != bootcfg.Busybox {
		t.Errorf("/bin/sh is not a link to busybox")
	}
	if e, ok := get("/dev/console"); !ok || e.typ() != cpioTypeChar || e.RMajor != 5 || e.RMinor != 1 {
		t.Errorf("/dev/console missing or wrong")
	}
	lists := map[string][]string{}
	for _, l := range []string{bootcfg.BootModules, bootcfg.LateModules} {
		e, ok := get(l)
		if !ok {
			t.Fatalf("%s missing", l)
		}
		lists[l] = strings.Fields(string(e.Data))
		for _, p := range lists[l] {
			if m, ok := get(bootcfg.ModulesDir + "/" + p); !ok || !strings.HasPrefix(string(m.Data), "\x7fELF") {
				t.Errorf("%s lists %s, which is not an ELF file in the initramfs", l, p)
			}
		}
	}
	t.Logf("boot modules: %q", lists[bootcfg.BootModules])
	t.Logf("late modules: %q", lists[bootcfg.LateModules])
	base := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, modName(strings.TrimSuffix(filepath.Base(p), ".ko")))
		}
		return out
	}
	boot, late := base(lists[bootcfg.BootModules]), base(lists[bootcfg.LateModules])
	before(t, boot, "virtio_ring", "virtio")
	before(t, boot, "virtio", "virtio_console")
	before(t, boot, "virtio_ring", "virtio_console")
	before(t, boot, "virtio", "virtio_mmio")
	for _, m := range []string{"virtio_blk", "virtio_net", "virtio_rng", "ext4", "overlay", "loop", "9p", "9pnet_virtio", "vsock", "vmw_vsock_virtio_transport"} {
		if !slices.Contains(late, m) {
			t.Errorf("late list lacks %s", m)
		}
	}
	for _, m := range boot {
		if slices.Contains(late, m) {
			t.Errorf("late list repeats boot module %s", m)
		}
	}
	// ext4's softdep on crc32c is met by every provider the kernel has.
	before(t, late, "crc32c_generic", "ext4")
	// iptables' modules, after what the VM needs sooner.
	for _, m := range []string{"x_tables", "ip_tables", "iptable_filter", "iptable_nat", "ip6table_filter", "nf_conntrack", "xt_tcpudp", "xt_conntrack"} {
		if !slices.Contains(late, m) {
			t.Errorf("late list lacks %s", m)
		}
	}
	before(t, late, "vsock", "x_tables")
	before(t, late, "x_tables", "ip_tables")
	// iptables and what the loader loads for it (programs_test.go runs
	// them).
	for name, link := range map[string]string{
		"/usr/sbin/xtables-legacy-multi":                 "",
		"/usr/sbin/iptables-save":                        "/usr/sbin/xtables-legacy-multi",
		"/usr/sbin/ip6tables-restore":                    "/usr/sbin/xtables-legacy-multi",
		"/lib/x86_64-linux-gnu/libc.so.6":                "",
		"/lib64/ld-linux-x86-64.so.2":                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/usr/lib/x86_64-linux-gnu/libxtables.so.12":     "",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_tcp.so": "",
		// e2fsprogs', for the stateful disk.
		"/sbin/mke2fs":                            "",
		"/sbin/mkfs.ext4":                         "/sbin/mke2fs",
		"/sbin/e2fsck":                            "",
		"/sbin/resize2fs":                         "",
		"/lib/x86_64-linux-gnu/libext2fs.so.2":    "",
		"/usr/lib/x86_64-linux-gnu/libblkid.so.1": "",
	} {
		e, ok := get(name)
		switch {
		case !ok:
			t.Errorf("%s missing", name)
		case link != "" && (e.typ() != cpioTypeLink || string(e.Data) != link):
			t.Errorf("%s is not a link to %s", name, link)
		case link == "" && (e.typ() != cpioTypeReg || !strings.HasPrefix(string(e.Data), "\x7fELF")):
			t.Errorf("%s is not an ELF file", name)
		}
	}
	checkDebianZoneinfo(t, entries)
}

// checkDebianZoneinfo checks tzdata's part of the initramfs.
func checkDebianZoneinfo(t *testing.T, entries []cpioEntry) {
	t.Helper()
	const tree = "usr/share/zoneinfo/"
	if e, ok := findEntry(entries, "etc/localtime"); !ok || e.typ() != cpioTypeLink || string(e.Data) != "/"+tree+"UTC" {
		t.Errorf("/etc/localtime is not a link to /%sUTC", tree)
	}
	for _, name := range []string{"/etc/localtime", "/" + tree + "UTC", "/" + tree + "Etc/UTC", "/" + tree + "Europe/Paris", "/" + tree + "America/New_York"} {
		e, ok := resolveEntry(entries, name)
		if !ok || e.typ() != cpioTypeReg || !strings.HasPrefix(e.Name, tree) || !strings.HasPrefix(string(e.Data), "TZif") {
			t.Errorf("%s does not resolve to a zone file in the tree (reached %q, found %v)", name, e.Name, ok)
		}
	}
	var files, links, bytes int
	for _, e := range entries {
		rel, ok := strings.CutPrefix(e.Name, tree)
		if !ok {
			continue
		}
		if rel == "right" || strings.HasPrefix(rel, "right/") || rel == "localtime" {
			t.Errorf("%s is in the initramfs", e.Name)
		}
		switch e.typ() {
		case cpioTypeReg:
			files++
			bytes += len(e.Data)
			if strings.HasPrefix(rel, "posix/") {
				t.Errorf("%s: posix/ holds a copy, not a link", e.Name)
			}
		case cpioTypeLink:
			links++
			// Every link lands on a file or directory of the tree.
			if to, ok := resolveEntry(entries, e.Name); !ok || !strings.HasPrefix(to.Name, tree) {
				t.Errorf("%s -> %s does not resolve inside the tree (reached %q)", e.Name, e.Data, to.Name)
			}
		case cpioTypeDir:
		default:
			t.Errorf("%s: mode %o, neither a file, a link nor a directory", e.Name, e.Mode)
		}
	}
	t.Logf("zoneinfo: %d files (%d bytes), %d links", files, bytes, links)
	if files < 300 || links < 50 {
		t.Errorf("zoneinfo has %d files and %d links: too few for tzdata", files, links)
	}
}

func withBuilt(img Image, built bool) Image {
	img.Built = built
	return img
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestAgentDigestFollowsTheFile: the agent's digest is served from memory
// while the file is unchanged, and is computed again when the file is
// rewritten in place (same inode, same size) or replaced.
func TestAgentDigestFollowsTheFile(t *testing.T) {
	src, err := os.ReadFile(staticAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "cabin-agent")
	if err := os.WriteFile(agent, src, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Builder{Root: statedirtest.New(t), AgentBinary: agent, Log: testLogger(t)}
	want := func(content []byte) string {
		sum := sha256.Sum256(content)
		return hex.EncodeToString(sum[:])
	}
	check := func(when string, content []byte) {
		t.Helper()
		got, err := b.agentDigest()
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if got != want(content) {
			t.Errorf("%s: digest %s, want %s", when, got, want(content))
		}
	}
	check("first", src)
	if b.agent.sum == "" {
		t.Fatal("the digest was not kept")
	}
	check("unchanged", src)

	// Rewritten in place, same size: one byte amid the program differs.
	mid := len(src) / 2
	edited := bytes.Clone(src)
	edited[mid] ^= 0xff
	f, err := os.OpenFile(agent, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(edited[mid:mid+1], int64(mid)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	check("rewritten in place", edited)

	// Replaced by rename, as a new build is installed.
	next := filepath.Join(filepath.Dir(agent), "next")
	if err := os.WriteFile(next, src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, agent); err != nil {
		t.Fatal(err)
	}
	check("replaced", src)
}
