package guestimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

// fakeApt is apt as the update tests see it: the real fingerprint of a
// lists directory of the test's, the candidates the test sets, and a
// mirror that cannot be reached.
type fakeApt struct {
	hostApt
	cand      candidates
	lookups   int
	downloads []pkgRef
	// onDownload, if set, runs before a download fails.
	onDownload func()
}

func (f *fakeApt) Candidates(context.Context) (candidates, error) {
	f.lookups++
	return candidates{Kernel: f.cand.Kernel, Userland: slices.Clone(f.cand.Userland)}, nil
}

func (f *fakeApt) Download(ctx context.Context, p pkgRef, _ string, onBytes func(done, total int64)) (string, error) {
	f.downloads = append(f.downloads, p)
	// Part of the package comes before the mirror goes away.
	if onBytes != nil {
		onBytes(4096, 70<<20)
	}
	if f.onDownload != nil {
		f.onDownload()
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("download %s: %w", p, errMirrorDown)
}

var errMirrorDown = errors.New("E: Failed to fetch http://deb.debian.org/debian/pool: Could not resolve 'deb.debian.org'")

// updateFixture is a cached image, as a build from fakeApt's candidates
// would have left it, and the builder that serves it.
type updateFixture struct {
	b     *Builder
	apt   *fakeApt
	img   Image      // what Ensure serves from the cache
	built candidates // what the image holds
	logs  *bytes.Buffer
	steps []string
	// bytes are the download reports.
	bytes []Progress
}

func newUpdateFixture(t *testing.T) *updateFixture {
	t.Helper()
	root := statedirtest.New(t)
	logs := &bytes.Buffer{}
	f := &updateFixture{
		apt: &fakeApt{hostApt: hostApt{lists: t.TempDir()}},
		built: candidates{
			Kernel:   pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"},
			Userland: testUserland(),
		},
		logs: logs,
	}
	f.apt.cand = f.built
	f.b = &Builder{
		Root: root, AgentBinary: staticAgent(t), RuntimeBinary: staticRuntime(t), apt: f.apt,
		Log: slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), logs), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	putFile(t, filepath.Join(f.apt.lists, "deb.debian.org_debian_dists_bookworm_InRelease"), "Date: Sat, 21 Nov 2026 08:00:00 UTC\n")
	f.aptUpdate(t)
	sums, err := f.b.digests()
	if err != nil {
		t.Fatal(err)
	}

	// The kernel as ensureKernel leaves it, so a build reuses it.
	release := strings.TrimPrefix(f.built.Kernel.Name, "linux-image-")
	kdirName, err := kernelDirName(release, f.built.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	kdir := root.KernelDir(kdirName)
	info := kernelInfo{
		Format: kernelFormat, Package: f.built.Kernel, Release: release,
		WantBoot: bootModuleNames, WantLate: lateModuleNames, Boot: []string{"kernel/virtio_mmio.ko"},
	}
	data, _ := json.Marshal(info)
	putFile(t, filepath.Join(kdir, kernelInfoName), string(data))
	putFile(t, filepath.Join(kdir, vmlinuxName), "\x7fELF")
	putFile(t, filepath.Join(kdir, modulesSubdir, "kernel", "virtio_mmio.ko"), "\x7fELF")
	for _, p := range f.built.Userland {
		putFile(t, f.b.debPath(p), "!<arch>\n")
	}
	m := &manifest{
		Format: builderFormat, Kernel: f.built.Kernel, KernelRelease: release, KernelDir: kdirName,
		Userland: f.built.Userland, AgentSHA256: sums.agent, RuntimeSHA256: sums.runtime, BootModules: info.Boot,
		WantBoot: bootModuleNames, WantLate: lateModuleNames, BuiltAt: time.Now().UTC().Format(time.RFC3339),
		RootfsDir: rootfsKey(f.built.Userland, sums.runtime, f.built.Kernel, nil),
	}
	putRootfs(t, root.RootfsDir(m.RootfsDir))
	m.Key = cacheKey(sums, m.Kernel, m.Userland, m.BootModules, m.LateModules)
	putFile(t, root.Initramfs(m.Key), "070701")
	m.InitramfsBytes = 6
	if m.AptState, err = f.apt.ListsState(); err != nil {
		t.Fatal(err)
	}
	if err := f.b.writeManifest(m); err != nil {
		t.Fatal(err)
	}
	f.img = f.b.image(m, false)
	return f
}

func putFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// aptUpdate does to the lists what an apt-get update that brought a new
// index does: fetch it into partial/ and rename it into place.
func (f *updateFixture) aptUpdate(t *testing.T) {
	t.Helper()
	partial := filepath.Join(f.apt.lists, "partial", "Packages")
	putFile(t, partial, "Package: linux-image-amd64\n")
	if err := os.Rename(partial, filepath.Join(f.apt.lists, "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4")); err != nil {
		t.Fatal(err)
	}
}

func (f *updateFixture) ensure(t *testing.T, ctx context.Context) (Image, error) {
	t.Helper()
	return f.b.Ensure(ctx, func(p Progress) {
		if p.Done == 0 && p.Total == 0 {
			f.steps = append(f.steps, p.Step)
			return
		}
		f.bytes = append(f.bytes, p)
	})
}

// wantCached checks that Ensure served the fixture's image without
// building or downloading anything, having asked apt lookups times in all.
func (f *updateFixture) wantCached(t *testing.T, img Image, err error, lookups int) {
	t.Helper()
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if img != f.img {
		t.Errorf("Ensure = %+v, want the cached %+v", img, f.img)
	}
	if f.apt.lookups != lookups {
		t.Errorf("apt asked for candidates %d times, want %d", f.apt.lookups, lookups)
	}
	if len(f.apt.downloads) > 0 {
		t.Errorf("downloaded %v", f.apt.downloads)
	}
}

func (f *updateFixture) manifest(t *testing.T) *manifest {
	t.Helper()
	m, err := f.b.readManifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestEnsureListsUnchanged: while apt's lists are as they were at the
// build, Ensure does not ask apt, even after an apt-get update that
// brought nothing new.
func TestEnsureListsUnchanged(t *testing.T) {
	f := newUpdateFixture(t)
	// Newer candidates that Ensure must not see.
	f.apt.cand.Kernel = pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	img, err := f.ensure(t, context.Background())
	f.wantCached(t, img, err, 0)

	// What apt-get update does to an index the mirror did not change.
	index := filepath.Join(f.apt.lists, "deb.debian.org_debian_dists_bookworm_InRelease")
	if err := os.Chmod(index, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(index, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err = f.ensure(t, context.Background())
	f.wantCached(t, img, err, 0)
	if len(f.steps) > 0 {
		t.Errorf("steps reported: %q", f.steps)
	}
}

// TestEnsureListsChangedSameVersions: new lists with the same candidates
// cost one apt lookup, after which Ensure is cheap again.
func TestEnsureListsChangedSameVersions(t *testing.T) {
	f := newUpdateFixture(t)
	f.aptUpdate(t)
	img, err := f.ensure(t, context.Background())
	f.wantCached(t, img, err, 1)
	state, err := f.apt.ListsState()
	if err != nil {
		t.Fatal(err)
	}
	if got := f.manifest(t).AptState; got != state {
		t.Errorf("manifest apt state %q, want the lists' %q", got, state)
	}
	img, err = f.ensure(t, context.Background())
	f.wantCached(t, img, err, 1)
}

// TestEnsureNewerKernelOffline: apt offers a newer kernel the mirror
// cannot deliver. Ensure tries to download it, then serves the cached
// image, warning, and tries again at the next start.
func TestEnsureNewerKernelOffline(t *testing.T) {
	f := newUpdateFixture(t)
	newer := pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	f.apt.cand.Kernel = newer
	f.aptUpdate(t)
	before := f.manifest(t)
	img, err := f.ensure(t, context.Background())
	if err != nil {
		t.Fatalf("Ensure with the mirror down: %v", err)
	}
	if img != f.img {
		t.Errorf("Ensure = %+v, want the cached %+v", img, f.img)
	}
	if !slices.Equal(f.apt.downloads, []pkgRef{newer}) {
		t.Errorf("downloads %v, want %v", f.apt.downloads, newer)
	}
	if !slices.Contains(f.steps, "downloading "+newer.String()) {
		t.Errorf("steps %q lack the download of %s", f.steps, newer)
	}
	var warning string
	for _, l := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") {
			warning = l
		}
	}
	if !strings.Contains(warning, newer.String()) || !strings.Contains(warning, "Could not resolve") {
		t.Errorf("warning %q does not name %s and the error", warning, newer)
	}
	if after := f.manifest(t); after.AptState != before.AptState || after.Kernel != before.Kernel {
		t.Errorf("manifest changed by a failed update: %+v", after)
	}
	// Still behind apt, but starts right after a failure do not wait for
	// the mirror again.
	if img, err := f.ensure(t, context.Background()); err != nil || img != f.img {
		t.Fatalf("Ensure right after a failed update = %+v, %v; want the cached image", img, err)
	}
	if f.apt.lookups != 1 || len(f.apt.downloads) != 1 {
		t.Errorf("Ensure right after a failed update: %d lookups, downloads %v; want no new try", f.apt.lookups, f.apt.downloads)
	}
	// Once updateRetry has passed, the next start tries again.
	f.b.retryAt = time.Now().Add(-time.Second)
	if _, err := f.ensure(t, context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.apt.lookups != 2 || len(f.apt.downloads) != 2 {
		t.Errorf("Ensure after updateRetry: %d lookups, downloads %v; want a second try", f.apt.lookups, f.apt.downloads)
	}
}

// TestEnsureNewerUserland: a newer busybox is downloaded on its own; the
// unpacked kernel is kept.
func TestEnsureNewerUserland(t *testing.T) {
	f := newUpdateFixture(t)
	newer := pkgRef{busyboxPackage, "1:1.35.0-4+deb12u2"}
	f.apt.cand.Userland = []pkgRef{newer, f.built.Userland[1]}
	f.aptUpdate(t)
	img, err := f.ensure(t, context.Background())
	if err != nil || img != f.img {
		t.Fatalf("Ensure = %+v, %v; want the cached image", img, err)
	}
	if !slices.Equal(f.apt.downloads, []pkgRef{newer}) {
		t.Errorf("downloads %v, want only %v", f.apt.downloads, newer)
	}
	if !strings.Contains(f.logs.String(), newer.String()) {
		t.Errorf("no log names %s", newer)
	}
}

// TestEnsureUpdateCanceled: a caller that gives up during the update gets
// its error, not an image.
func TestEnsureUpdateCanceled(t *testing.T) {
	f := newUpdateFixture(t)
	f.apt.cand.Kernel = pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	f.aptUpdate(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.apt.onDownload = cancel
	if _, err := f.ensure(t, ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ensure canceled during the download: %v, want context.Canceled", err)
	}
}

// TestEnsureNoCacheFails: without a usable cached image, a failed build
// is Ensure's error.
func TestEnsureNoCacheFails(t *testing.T) {
	f := newUpdateFixture(t)
	f.apt.cand.Kernel = pkgRef{"linux-image-6.1.0-57-amd64", "6.1.193-1"}
	if err := os.Remove(f.img.Initramfs); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ensure(t, context.Background()); !errors.Is(err, errMirrorDown) {
		t.Errorf("Ensure without a cached image, mirror down: %v, want the download error", err)
	}
	// The download's bytes reached the caller, under the step that
	// downloads.
	want := Progress{Step: "downloading linux-image-6.1.0-57-amd64 6.1.193-1", Done: 4096, Total: 70 << 20}
	if len(f.bytes) != 1 || f.bytes[0] != want {
		t.Errorf("download progress %+v, want [%+v]", f.bytes, want)
	}
}

// TestEnsureOldManifest: a manifest written before the apt state was
// recorded is checked against apt once, then no more.
func TestEnsureOldManifest(t *testing.T) {
	f := newUpdateFixture(t)
	data, err := os.ReadFile(f.b.Root.ImageManifest())
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	if _, ok := fields["aptState"]; !ok {
		t.Fatalf("the manifest has no aptState: %s", data)
	}
	delete(fields, "aptState")
	data, _ = json.Marshal(fields)
	putFile(t, f.b.Root.ImageManifest(), string(data))

	img, err := f.ensure(t, context.Background())
	f.wantCached(t, img, err, 1)
	if f.manifest(t).AptState == "" {
		t.Error("apt state not recorded after the check")
	}
	img, err = f.ensure(t, context.Background())
	f.wantCached(t, img, err, 1)
}

// TestBuildRecordsAptState: Build records the lists it read the
// candidates from, so the next Ensure need not ask apt.
func TestBuildRecordsAptState(t *testing.T) {
	f := newUpdateFixture(t)
	f.aptUpdate(t)
	img, err := f.b.Build(context.Background(), false, nil)
	if err != nil || img != f.img {
		t.Fatalf("Build = %+v, %v; want the cached image", img, err)
	}
	img, err = f.ensure(t, context.Background())
	f.wantCached(t, img, err, 1)
}

// TestListsState checks the fingerprint of apt's lists against what
// apt-get update does to them.
func TestListsState(t *testing.T) {
	dir := t.TempDir()
	state := listsState(t, hostApt{lists: dir})
	index := filepath.Join(dir, "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4")
	putFile(t, index, "lists v1")
	putFile(t, filepath.Join(dir, "lock"), "")
	os.MkdirAll(filepath.Join(dir, "partial"), 0o700)
	s0 := state()
	if state() != s0 {
		t.Fatal("fingerprint not stable")
	}

	// apt's working state and a status-change time are not the lists.
	putFile(t, filepath.Join(dir, "partial", "next"), "half a download")
	putFile(t, filepath.Join(dir, "lock"), "")
	os.Chmod(index, 0o600)
	if state() != s0 {
		t.Error("fingerprint moved with apt's working state or a status-change time")
	}

	// A new index renamed into place, even one of the same size and
	// time.
	st, _ := os.Stat(index)
	next := filepath.Join(dir, "partial", "next")
	putFile(t, next, "lists v2")
	os.Chtimes(next, st.ModTime(), st.ModTime())
	if err := os.Rename(next, index); err != nil {
		t.Fatal(err)
	}
	s1 := state()
	if s1 == s0 {
		t.Error("fingerprint unchanged by a new index")
	}
	// A source added; then removed.
	added := filepath.Join(dir, "deb.debian.org_debian_dists_bookworm-backports_InRelease")
	putFile(t, added, "")
	if state() == s1 {
		t.Error("fingerprint unchanged by a new source")
	}
	os.Remove(added)
	if state() != s1 {
		t.Error("fingerprint differs with the same lists")
	}
	// Rewritten in place at another time.
	os.Chtimes(index, st.ModTime(), st.ModTime().Add(time.Second))
	if state() == s1 {
		t.Error("fingerprint unchanged by a new modification time")
	}

	if _, err := (hostApt{lists: filepath.Join(dir, "none")}).ListsState(); err == nil {
		t.Error("no error for a missing lists directory")
	}
}

// listsState returns a function giving a's fingerprint, failing t on error.
func listsState(t *testing.T, a hostApt) func() string {
	return func() string {
		t.Helper()
		s, err := a.ListsState()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// A pin changes apt's candidates without new lists: the pin files count.
func TestListsStatePins(t *testing.T) {
	lists, etc := t.TempDir(), t.TempDir()
	putFile(t, filepath.Join(lists, "deb.debian.org_debian_dists_bookworm_InRelease"), "")
	prefs := filepath.Join(etc, "preferences")
	state := listsState(t, hostApt{lists: lists, prefs: []string{prefs, prefs + ".d"}})
	none := state() // neither exists
	putFile(t, filepath.Join(prefs+".d", "kernel.pref"), "Package: linux-image-amd64\nPin: release a=bookworm-backports\nPin-Priority: 990\n")
	inDir := state()
	if inDir == none {
		t.Error("fingerprint unchanged by a pin in preferences.d")
	}
	putFile(t, prefs, "Package: busybox-static\nPin: version 1:1.35*\nPin-Priority: 1001\n")
	if state() == inDir {
		t.Error("fingerprint unchanged by the preferences file")
	}
	os.Remove(prefs)
	if state() != inDir {
		t.Error("fingerprint differs with the same pins")
	}
}
