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
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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
		"agent":            cacheKey(digests{agent: strings.Repeat("cd", 32), runtime: agent.runtime}, kernel, userland, boot, late),
		"runtime":          cacheKey(digests{agent: agent.agent, runtime: strings.Repeat("cd", 32)}, kernel, userland, boot, late),
		"swapped binaries": cacheKey(digests{agent: agent.runtime, runtime: agent.agent}, kernel, userland, boot, late),
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
		m := &manifest{
			Format: builderFormat, Kernel: kernel, KernelRelease: "6.1.0-56-amd64", KernelDir: "k",
			Userland: userland, AgentSHA256: sums.agent, RuntimeSHA256: sums.runtime, BootModules: []string{"a.ko"}, InitramfsBytes: 4,
			WantBoot: slices.Clone(bootModuleNames), WantLate: slices.Clone(lateModuleNames),
			RootfsDir: rootfsKey(userland, sums.runtime, kernel, nil),
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
	// A generation named for another runtime (or a name that is not one).
	for _, name := range []string{rootfsKey(userland, sha256Hex("another runtime"), kernel, nil), "../../etc"} {
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
