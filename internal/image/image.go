// Package image builds and caches the guest image cabind boots: an
// uncompressed vmlinux taken from Debian's linux-image-amd64 (booted
// directly through its PVH entry point); an initramfs holding the static
// cabin-agent as /init, the static cabin-runtime, busybox-static, tzdata's
// zoneinfo, and the kernel modules the agent loads; and the container root
// filesystems every VM gets as a read-only share (see rootfs.go).
// Everything lives under the state dir's image directory; the host's own
// /boot and /lib are never touched.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/statedir"
)

// builderFormat versions what this code puts in the initramfs. Bump it when
// the initramfs layout or the manifest change, so images built by older
// code are rebuilt.
//
// 2: tzdata's zoneinfo and /etc/localtime; manifest "userland" replaces
// "busybox".
//
// The manifest's "aptState" came later without a bump: a manifest without
// it is read as one whose packages were never checked against apt's lists.
// So did cabin-runtime (in the initramfs, "runtimeSHA256") and the
// container root filesystems ("rootfsDir"): a manifest without them
// matches no runtime, so its image is rebuilt, while its packages still
// serve Ensure's fallback to the last image's packages.
const builderFormat = 2

// kernelFormat versions what this code unpacks from the kernel package:
// the vmlinux extraction and the module resolution (the module sets are
// compared on their own). Bumping it downloads the kernel package again;
// bumping builderFormat does not. It started at 2, the builder's format
// when the two were split, so caches from then are kept.
const kernelFormat = 2

// Names inside the cache directories that statedir hands out.
const (
	vmlinuxName    = "vmlinux"
	modulesSubdir  = "modules"
	kernelInfoName = "kernel.json"
	// Prefixes of work directories; leftovers of a crashed build are
	// removed under the lock.
	unpackPrefix   = ".unpack-"
	buildPrefix    = ".build-"
	downloadPrefix = ".download-"
)

// Builder builds the guest image into a state dir. Use it by pointer and do
// not copy it after first use.
type Builder struct {
	Root        statedir.Root
	AgentBinary string // static cabin-agent
	Log         *slog.Logger
	// RuntimeBinary is the static cabin-runtime, put at
	// bootcfg.RuntimeBinary. Like the agent's, its digest names the
	// initramfs: a new runtime is a new image.
	RuntimeBinary string
	// InUse lists the host directories given as shares to VMs that may
	// still be running. A container root filesystem generation among them
	// is never pruned: its VM's QEMU serves it for the VM's life. nil
	// means no VM uses any; an error keeps every generation.
	InUse func() ([]string, error)

	// apt is where packages come from; nil means the host's apt.
	apt packageSource

	once sync.Once
	sem  chan struct{} // one build at a time in this process

	// The binaries' last digests and the file states they are of;
	// guarded by the build lock.
	agent, runtime cachedDigest

	// After an update fails, Ensure does not try again for these lists
	// until retryAt, so VM starts do not each wait for a mirror that is
	// down. Guarded by the build lock.
	retryLists string
	retryAt    time.Time
}

// updateRetry is how long Ensure keeps to a cached image after an update
// to newer packages failed, before it tries again with the same apt lists.
const updateRetry = 5 * time.Minute

// Image is a built guest image.
type Image struct {
	KernelVersion  string // e.g. "6.1.0-56-amd64 (6.1.192-2)"
	Kernel         string // path of vmlinux
	Initramfs      string
	InitramfsBytes int64
	AgentSHA256    string // hex
	Built          bool   // false when served from cache
	// RuntimeSHA256 is cabin-runtime's, hex.
	RuntimeSHA256 string
	// Rootfs is the directory to share with VMs (tag bootcfg.RootfsTag,
	// read-only): one container root filesystem per subdirectory, such
	// as bootcfg.RootfsBusybox. It never changes while it exists.
	Rootfs string
}

// digests are those of the binaries the initramfs carries, which name it.
type digests struct {
	agent, runtime string
}

// manifest is ImageManifest(): enough to answer Ensure without apt.
type manifest struct {
	Format         int      `json:"format"`
	Key            string   `json:"key"`
	Kernel         pkgRef   `json:"kernel"`
	KernelRelease  string   `json:"kernelRelease"`
	KernelDir      string   `json:"kernelDir"` // element under kernel/
	Userland       []pkgRef `json:"userland"`  // in userlandPackages order
	AgentSHA256    string   `json:"agentSHA256"`
	InitramfsBytes int64    `json:"initramfsBytes"`
	BootModules    []string `json:"bootModules"`
	LateModules    []string `json:"lateModules"`
	// The module names asked for, which BootModules and LateModules
	// resolve: an image built for other names is not current.
	WantBoot []string `json:"wantBoot"`
	WantLate []string `json:"wantLate"`
	BuiltAt  string   `json:"builtAt"`
	// AptState is apt's lists' fingerprint (packageSource.ListsState)
	// when Kernel and Userland were last found to be apt's candidates:
	// while the lists keep it, Ensure need not ask apt again. Empty when
	// unknown, which no fingerprint matches.
	AptState string `json:"aptState,omitempty"`
	// RuntimeSHA256 is cabin-runtime's digest, which names the
	// initramfs with the agent's.
	RuntimeSHA256 string `json:"runtimeSHA256"`
	// RootfsDir is the container root filesystems' generation, an
	// element under rootfs/ (rootfsKey of the busybox in Userland).
	RootfsDir string `json:"rootfsDir"`
}

// kernelInfo is kernel.json in a KernelDir: what the unpacked kernel holds,
// so a later build can reuse it without downloading again.
type kernelInfo struct {
	Format   int      `json:"format"`
	Package  pkgRef   `json:"package"`
	Release  string   `json:"release"`
	WantBoot []string `json:"wantBoot"` // the requested sets it was resolved for
	WantLate []string `json:"wantLate"`
	Boot     []string `json:"boot"` // resolved, relative to modules/, load order
	Late     []string `json:"late"`
}

func (b *Builder) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// Ensure returns the cached image if it is current, and otherwise builds.
// Current means its files exist, the agent binary's digest matches, and it
// holds the packages apt would install. Ensure runs on every VM start, so
// it asks apt (a local apt-cache run of about a second, no network) only
// when apt's lists changed since it last did; when apt then offers a newer
// kernel or userland, Ensure downloads it and rebuilds. If that update
// fails, the cached image is returned and the failure logged: a VM start
// does not depend on a mirror. Likewise, an image rebuilt for a new agent
// that cannot get apt's packages is built from those of the last image.
// progress may be nil.
func (b *Builder) Ensure(ctx context.Context, progress func(step string)) (Image, error) {
	unlock, sums, err := b.lockAndDigest(ctx)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	return b.ensure(ctx, sums, progress)
}

// ensure is Ensure under the build lock.
func (b *Builder) ensure(ctx context.Context, sums digests, progress func(step string)) (Image, error) {
	m, err := b.readManifest()
	if err == nil {
		if img, ok := b.cached(m, sums); ok {
			return b.update(ctx, m, img, sums, progress)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		b.log().Warn("image manifest unreadable, rebuilding", "err", err)
	}
	img, err := b.build(ctx, sums, false, progress)
	if err == nil || ctx.Err() != nil || m == nil || m.Format != builderFormat ||
		!slices.Equal(pkgNames(m.Userland), userlandPackages) {
		return img, err
	}
	// The last image's packages are most likely still here: its kernel
	// unpacked, its userland downloaded. Its apt state is kept, so the
	// lists still count as not checked.
	b.log().Warn("cannot build the guest image from apt's packages; building it from the last image's",
		"kernel", m.Kernel.String(), "err", err)
	last := candidates{Kernel: m.Kernel, Userland: m.Userland}
	if img, lerr := b.buildFrom(ctx, sums, false, m.AptState, last, b.stepper(progress)); lerr == nil {
		return img, nil
	}
	return Image{}, err
}

// Rootfs returns the directory of the container root filesystems (see
// Image.Rootfs) for a VM that boots a kernel and initramfs of its own:
// those of the cached image, without checking the binaries or asking apt
// whether it is current, which is Ensure's work when a VM boots the
// image. Only when there are none does it ensure the whole image.
func (b *Builder) Rootfs(ctx context.Context, progress func(step string)) (string, error) {
	unlock, err := b.lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	if m, err := b.readManifest(); err == nil && isHexDigest(m.RootfsDir) {
		if dir := b.Root.RootfsDir(m.RootfsDir); rootfsComplete(dir) {
			return dir, nil
		}
	}
	sums, err := b.digests()
	if err != nil {
		return "", err
	}
	img, err := b.ensure(ctx, sums, progress)
	if err != nil {
		return "", err
	}
	return img.Rootfs, nil
}

// update returns img, the usable cached image m describes, unless apt's
// lists changed since m's packages were found current and apt now has
// others: then it builds from those, falling back to img if that fails.
func (b *Builder) update(ctx context.Context, m *manifest, img Image, sums digests, progress func(string)) (Image, error) {
	log := b.log()
	src := b.packages()
	state, err := src.ListsState()
	if err != nil {
		log.Warn("guest image not checked for newer packages", "err", err)
		return img, nil
	}
	if state == m.AptState || (state == b.retryLists && time.Now().Before(b.retryAt)) {
		return img, nil
	}
	// Whatever fails below is tried again only after updateRetry.
	failed := func() { b.retryLists, b.retryAt = state, time.Now().Add(updateRetry) }
	step := b.stepper(progress)
	step("checking apt for a newer guest kernel")
	have := candidates{Kernel: m.Kernel, Userland: m.Userland}
	cand, err := src.Candidates(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Image{}, err
		}
		failed()
		log.Warn("cannot check apt for a newer guest kernel; using the cached image",
			"kernel", img.KernelVersion, "err", err, "retry_in", updateRetry)
		return img, nil
	}
	if cand.equal(have) {
		m.AptState = state
		if err := b.writeManifest(m); err != nil {
			log.Warn("image manifest not updated; apt will be asked again", "err", err)
		}
		return img, nil
	}
	newer := cand.newer(have)
	log.Info("apt has newer guest packages; updating the guest image", "newer", newer, "cached", img.KernelVersion)
	next, err := b.buildFrom(ctx, sums, false, state, cand, step)
	if err != nil {
		if ctx.Err() != nil {
			return Image{}, err
		}
		// The manifest still holds the old state, so a start after
		// updateRetry tries again.
		failed()
		log.Warn("guest image update failed; using the cached image",
			"newer", newer, "cached", img.KernelVersion, "err", err, "retry_in", updateRetry)
		if progress != nil {
			progress("update failed; using the cached image")
		}
		return img, nil
	}
	return next, nil
}

// Build checks apt for the current kernel and userland packages, downloads
// and unpacks those that changed, and rebuilds the initramfs unless current
// (or force). Unlike Ensure, it fails if it cannot.
func (b *Builder) Build(ctx context.Context, force bool, progress func(step string)) (Image, error) {
	unlock, sums, err := b.lockAndDigest(ctx)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	return b.build(ctx, sums, force, progress)
}

// lockAndDigest takes the build lock and returns the binaries' digests,
// which are read under it.
func (b *Builder) lockAndDigest(ctx context.Context) (unlock func(), sums digests, err error) {
	unlock, err = b.lock(ctx)
	if err != nil {
		return nil, digests{}, err
	}
	if sums, err = b.digests(); err != nil {
		unlock()
		return nil, digests{}, err
	}
	return unlock, sums, nil
}

// digests checks the agent and runtime binaries and returns their
// digests. Called with the build lock held.
func (b *Builder) digests() (digests, error) {
	agent, err := b.agentDigest()
	if err != nil {
		return digests{}, err
	}
	runtime, err := b.runtimeDigest()
	if err != nil {
		return digests{}, err
	}
	return digests{agent: agent, runtime: runtime}, nil
}

// cached returns the image m describes if its files are all there and it
// was built by this code from these binaries.
func (b *Builder) cached(m *manifest, sums digests) (Image, bool) {
	bb, _ := findPackage(m.Userland, busyboxPackage)
	if m.Format != builderFormat || m.AgentSHA256 != sums.agent || m.RuntimeSHA256 != sums.runtime || !isHexDigest(m.Key) ||
		!slices.Equal(pkgNames(m.Userland), userlandPackages) ||
		!slices.Equal(m.WantBoot, bootModuleNames) || !slices.Equal(m.WantLate, lateModuleNames) ||
		m.Key != cacheKey(sums, m.Kernel, m.Userland, m.BootModules, m.LateModules) ||
		!safeElement(m.KernelDir) || m.RootfsDir != rootfsKey(bb) {
		return Image{}, false
	}
	img := b.image(m, false)
	if st, err := os.Stat(img.Kernel); err != nil || !st.Mode().IsRegular() {
		return Image{}, false
	}
	if st, err := os.Stat(img.Initramfs); err != nil || st.Size() != m.InitramfsBytes {
		return Image{}, false
	}
	if !rootfsComplete(img.Rootfs) {
		return Image{}, false
	}
	return img, true
}

func (b *Builder) image(m *manifest, built bool) Image {
	return Image{
		KernelVersion:  m.KernelRelease + " (" + m.Kernel.Version + ")",
		Kernel:         filepath.Join(b.Root.KernelDir(m.KernelDir), vmlinuxName),
		Initramfs:      b.Root.Initramfs(m.Key),
		InitramfsBytes: m.InitramfsBytes,
		AgentSHA256:    m.AgentSHA256,
		RuntimeSHA256:  m.RuntimeSHA256,
		Rootfs:         b.Root.RootfsDir(m.RootfsDir),
		Built:          built,
	}
}

func (b *Builder) packages() packageSource {
	if b.apt == nil {
		return hostApt{lists: aptListsDir, prefs: aptPrefs, tmp: b.Root.ImageDir()}
	}
	return b.apt
}

// stepper returns the function that logs a build step and reports it to
// progress, which may be nil.
func (b *Builder) stepper(progress func(string)) func(string) {
	log := b.log()
	return func(s string) {
		log.Info(s)
		if progress != nil {
			progress(s)
		}
	}
}

// build asks apt for the candidates and builds the image from them.
func (b *Builder) build(ctx context.Context, sums digests, force bool, progress func(string)) (Image, error) {
	step := b.stepper(progress)
	step("checking apt for the guest kernel")
	src := b.packages()
	// Taken before the candidates are read, so lists that change meanwhile
	// are checked again.
	state, err := src.ListsState()
	if err != nil {
		b.log().Warn("apt lists unreadable; the next start will ask apt again", "err", err)
		state = ""
	}
	cand, err := src.Candidates(ctx)
	if err != nil {
		return Image{}, err
	}
	return b.buildFrom(ctx, sums, force, state, cand, step)
}

// buildFrom builds the image from cand, downloading what the cache lacks,
// and records it in the manifest with aptState, the lists' fingerprint
// cand was read under. force rebuilds the initramfs, not the container
// root filesystems: a generation in place may be in use, and is never
// changed.
func (b *Builder) buildFrom(ctx context.Context, sums digests, force bool, aptState string, cand candidates, step func(string)) (Image, error) {
	log := b.log()
	started := time.Now()
	for _, d := range []string{b.Root.DownloadsDir(), b.kernelsDir(), b.initramfsDir(), b.rootfsDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Image{}, fmt.Errorf("image cache: %w", err)
		}
	}
	b.removeLeftovers()

	kpkg, userland := cand.Kernel, cand.Userland
	kdirName, kinfo, kernelBuilt, err := b.ensureKernel(ctx, kpkg, step)
	if err != nil {
		return Image{}, err
	}
	if err := b.ensureDebs(ctx, userland, step); err != nil {
		return Image{}, err
	}
	rootfsName, rootfsBuilt, err := b.ensureRootfs(ctx, userland, step)
	if err != nil {
		return Image{}, err
	}

	m := &manifest{
		Format:        builderFormat,
		Kernel:        kpkg,
		KernelRelease: kinfo.Release,
		KernelDir:     kdirName,
		Userland:      userland,
		AgentSHA256:   sums.agent,
		RuntimeSHA256: sums.runtime,
		RootfsDir:     rootfsName,
		BootModules:   kinfo.Boot,
		LateModules:   kinfo.Late,
		WantBoot:      kinfo.WantBoot,
		WantLate:      kinfo.WantLate,
		AptState:      aptState,
	}
	m.Key = cacheKey(sums, kpkg, userland, kinfo.Boot, kinfo.Late)
	initrd := b.Root.Initramfs(m.Key)
	initrdBuilt := false
	// The file is named by the digest of its inputs and written
	// atomically, so if it exists it is complete and current.
	if st, err := os.Stat(initrd); err == nil && st.Mode().IsRegular() && !force {
		m.InitramfsBytes = st.Size()
	} else {
		step("building the initramfs")
		size, err := b.buildInitramfs(ctx, userland, b.Root.KernelDir(kdirName), kinfo, sums, initrd)
		if err != nil {
			return Image{}, err
		}
		m.InitramfsBytes = size
		initrdBuilt = true
	}
	prev, _ := b.readManifest()
	m.BuiltAt = time.Now().UTC().Format(time.RFC3339)
	if err := b.writeManifest(m); err != nil {
		return Image{}, err
	}
	b.prune(m, prev)
	img := b.image(m, kernelBuilt || initrdBuilt || rootfsBuilt)
	log.Info("guest image ready", "kernel", img.KernelVersion, "initramfs_bytes", img.InitramfsBytes,
		"rootfs", img.Rootfs, "built", img.Built, "elapsed", time.Since(started).Round(time.Millisecond))
	return img, nil
}

// cacheKey names the initramfs by everything that goes into it.
func cacheKey(sums digests, kernel pkgRef, userland []pkgRef, boot, late []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "cabin initramfs\nformat %d\nkernel format %d\nagent %s\nruntime %s\nkernel %s %s\n",
		builderFormat, kernelFormat, sums.agent, sums.runtime, kernel.Name, kernel.Version)
	for _, p := range userland {
		fmt.Fprintf(h, "package %s %s\n", p.Name, p.Version)
	}
	fmt.Fprintf(h, "boot %s\nlate %s\n", strings.Join(boot, ","), strings.Join(late, ","))
	return hex.EncodeToString(h.Sum(nil))
}

func pkgNames(ps []pkgRef) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

// kernelDirName is the KernelDir element for a kernel package:
// release and package version, since Debian rebuilds a release under a new
// version now and then.
func kernelDirName(release string, p pkgRef) (string, error) {
	name := release + "_" + strings.ReplaceAll(p.Version, ":", "%3a")
	if !safeElement(name) {
		return "", fmt.Errorf("kernel %s: %q is not a safe directory name", p, name)
	}
	return name, nil
}

// ensureKernel makes KernelDir hold vmlinux and the modules for kpkg,
// downloading and unpacking the package unless an earlier build did.
func (b *Builder) ensureKernel(ctx context.Context, kpkg pkgRef, step func(string)) (string, *kernelInfo, bool, error) {
	release, err := kernelRelease(kpkg.Name)
	if err != nil {
		return "", nil, false, err
	}
	name, err := kernelDirName(release, kpkg)
	if err != nil {
		return "", nil, false, err
	}
	kdir := b.Root.KernelDir(name)
	if info, err := readKernelInfo(kdir); err == nil && info.Format == kernelFormat && info.Package == kpkg &&
		slices.Equal(info.WantBoot, bootModuleNames) && slices.Equal(info.WantLate, lateModuleNames) {
		if kernelDirComplete(kdir, info) {
			return name, info, false, nil
		}
	}

	step("downloading " + kpkg.String())
	deb, err := b.packages().Download(ctx, kpkg, b.Root.DownloadsDir())
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	// The unpacked package keeps what cabin needs; the 70 MB .deb is not
	// worth keeping beside it.
	defer os.Remove(deb)

	stage, err := os.MkdirTemp(filepath.Dir(kdir), unpackPrefix)
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	defer os.RemoveAll(stage)
	tree, out := filepath.Join(stage, "tree"), filepath.Join(stage, "out")
	step("unpacking " + kpkg.String())
	if err := debExtract(ctx, deb, tree); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(out, modulesSubdir), 0o755); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}

	step("extracting vmlinux")
	vmlinuz := filepath.Join(tree, "boot", "vmlinuz-"+release)
	if st, err := os.Lstat(vmlinuz); err != nil || !st.Mode().IsRegular() {
		return "", nil, false, fmt.Errorf("guest kernel: %s has no boot/vmlinuz-%s", kpkg, release)
	}
	if err := ExtractVmlinux(ctx, vmlinuz, filepath.Join(out, vmlinuxName)); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}

	step("resolving modules")
	modroot, err := findModuleRoot(tree, release)
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel %s: %w", kpkg, err)
	}
	if err := decompressModules(ctx, modroot); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	ix, err := indexModules(ctx, modroot)
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	boot, late, warnings, err := ix.moduleSets()
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel %s: %w", kpkg, err)
	}
	for _, w := range warnings {
		b.log().Warn("late module unavailable; the guest will lack what it provides", "kernel", kpkg.String(), "problem", w)
	}
	info := &kernelInfo{
		Format: kernelFormat, Package: kpkg, Release: release,
		WantBoot: bootModuleNames, WantLate: lateModuleNames,
	}
	for _, set := range []struct {
		mods []*module
		dst  *[]string
	}{{boot, &info.Boot}, {late, &info.Late}} {
		for _, mod := range set.mods {
			dst := filepath.Join(out, modulesSubdir, filepath.FromSlash(mod.Path))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", nil, false, fmt.Errorf("guest kernel: %w", err)
			}
			// Same file system: keep the module, drop the rest with the
			// tree.
			if err := os.Rename(filepath.Join(modroot, filepath.FromSlash(mod.Path)), dst); err != nil {
				return "", nil, false, fmt.Errorf("guest kernel: %w", err)
			}
			*set.dst = append(*set.dst, mod.Path)
		}
	}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return "", nil, false, err
	}
	if err := os.WriteFile(filepath.Join(out, kernelInfoName), append(data, '\n'), 0o644); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	// Replace any stale copy (older format or module sets) in one rename
	// of the finished directory.
	if err := os.RemoveAll(kdir); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.Rename(out, kdir); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	b.log().Info("guest kernel unpacked", "kernel", kpkg.String(), "boot_modules", len(info.Boot), "late_modules", len(info.Late))
	return name, info, true, nil
}

// kernelDirComplete reports whether vmlinux and every listed module are
// still there.
func kernelDirComplete(kdir string, info *kernelInfo) bool {
	paths := []string{filepath.Join(kdir, vmlinuxName)}
	for _, p := range append(slices.Clone(info.Boot), info.Late...) {
		paths = append(paths, filepath.Join(kdir, modulesSubdir, filepath.FromSlash(p)))
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// findModuleRoot finds lib/modules/<release> in an unpacked package; newer
// Debian ships it below usr/ (merged /usr).
func findModuleRoot(tree, release string) (string, error) {
	for _, p := range []string{"lib/modules", "usr/lib/modules"} {
		dir := filepath.Join(tree, filepath.FromSlash(p), release)
		if st, err := os.Lstat(dir); err == nil && st.IsDir() {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no lib/modules/%s in the package", release)
}

func readKernelInfo(kdir string) (*kernelInfo, error) {
	data, err := os.ReadFile(filepath.Join(kdir, kernelInfoName))
	if err != nil {
		return nil, err
	}
	var info kernelInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", kernelInfoName, err)
	}
	for _, p := range append(slices.Clone(info.Boot), info.Late...) {
		if err := checkModulePath(p); err != nil {
			return nil, err
		}
	}
	return &info, nil
}

// ensureDebs keeps the userland packages in DownloadsDir, downloading those
// apt has a new version of. They are small and every initramfs build
// unpacks them, so they are not worth fetching again.
func (b *Builder) ensureDebs(ctx context.Context, pkgs []pkgRef, step func(string)) error {
	for _, p := range pkgs {
		if _, err := os.Stat(b.debPath(p)); err == nil {
			continue
		}
		step("downloading " + p.String())
		if _, err := b.packages().Download(ctx, p, b.Root.DownloadsDir()); err != nil {
			return fmt.Errorf("guest userland: %w", err)
		}
	}
	return nil
}

func (b *Builder) debPath(p pkgRef) string {
	return filepath.Join(b.Root.DownloadsDir(), debFileName(p))
}

func (b *Builder) buildInitramfs(ctx context.Context, userland []pkgRef, kdir string, info *kernelInfo, sums digests, dst string) (int64, error) {
	work, err := os.MkdirTemp(b.Root.ImageDir(), buildPrefix)
	if err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	defer os.RemoveAll(work)
	// Each package is unpacked whole, into a directory named after it:
	// together they are a few MB, not worth streaming single files out of.
	for _, p := range userland {
		if err := debExtract(ctx, b.debPath(p), filepath.Join(work, p.Name)); err != nil {
			return 0, fmt.Errorf("initramfs: %w", err)
		}
	}
	bb := filepath.Join(work, busyboxPackage, "bin", "busybox")
	if st, err := os.Lstat(bb); err != nil || !st.Mode().IsRegular() {
		return 0, fmt.Errorf("initramfs: %s has no regular file bin/busybox", busyboxPackage)
	}
	// Checked like the agent: it runs in a guest without a libc, and we
	// are about to run it here.
	if err := checkAgent(bb); err != nil {
		return 0, fmt.Errorf("initramfs: busybox from %s: %w", busyboxPackage, err)
	}
	applets, err := busyboxApplets(ctx, bb)
	if err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	zoneRoot := filepath.Join(work, tzdataPackage, "usr", "share", "zoneinfo")
	zones, err := zoneinfoEntries(zoneRoot)
	if err != nil {
		return 0, fmt.Errorf("initramfs: %s: %w", tzdataPackage, err)
	}
	return writeInitramfs(dst, initramfsSpec{
		Agent:         b.AgentBinary,
		AgentSHA256:   sums.agent,
		Runtime:       b.RuntimeBinary,
		RuntimeSHA256: sums.runtime,
		Busybox:       bb,
		Applets:       applets,
		ModulesRoot:   filepath.Join(kdir, modulesSubdir),
		Boot:          info.Boot,
		Late:          info.Late,
		ZoneinfoRoot:  zoneRoot,
		Zones:         zones,
	})
}

func (b *Builder) readManifest() (*manifest, error) {
	data, err := os.ReadFile(b.Root.ImageManifest())
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	return &m, nil
}

// writeManifest replaces the manifest with m.
func (b *Builder) writeManifest(m *manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	if err := writeAtomic(b.Root.ImageManifest(), 0o644, func(f *os.File) error {
		_, err := f.Write(append(data, '\n'))
		return err
	}); err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	return nil
}

// prune removes kernels, initramfs files, packages and container root
// filesystem generations that neither the new nor the previous manifest
// names. The previous image is kept because another process may have just
// been handed its paths. Every other .deb goes: the kernel's is removed
// once unpacked anyway, and a package no longer in userlandPackages is not
// needed. A kernel or initramfs is loaded at a VM's start, so removing it
// later harms no VM; a generation is served for the VM's whole life, so
// those that InUse names stay too (and all of them, if it fails).
func (b *Builder) prune(cur, prev *manifest) {
	keepKernel, keepInitrd, keepDeb, keepRootfs := map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, m := range []*manifest{cur, prev} {
		if m == nil {
			continue
		}
		keepKernel[m.KernelDir] = true
		keepInitrd[filepath.Base(b.Root.Initramfs(m.Key))] = true
		for _, p := range m.Userland {
			keepDeb[debFileName(p)] = true
		}
		keepRootfs[m.RootfsDir] = true
	}
	pruneRootfs := true
	if b.InUse != nil {
		dirs, err := b.InUse()
		if err != nil {
			b.log().Warn("cannot tell which container root filesystems VMs use; keeping them all", "err", err)
			pruneRootfs = false
		}
		for _, d := range dirs {
			if filepath.Dir(d) == b.rootfsDir() {
				keepRootfs[filepath.Base(d)] = true
			}
		}
	}
	removeExcept := func(dir string, keep map[string]bool, match func(string) bool) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if keep[e.Name()] || !match(e.Name()) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if err := os.RemoveAll(p); err != nil {
				b.log().Warn("prune image cache", "path", p, "err", err)
			} else {
				b.log().Debug("pruned image cache", "path", p)
			}
		}
	}
	notHidden := func(n string) bool { return !strings.HasPrefix(n, ".") }
	removeExcept(b.kernelsDir(), keepKernel, notHidden)
	removeExcept(b.initramfsDir(), keepInitrd, func(n string) bool {
		return notHidden(n) && strings.HasSuffix(n, ".cpio")
	})
	removeExcept(b.Root.DownloadsDir(), keepDeb, func(n string) bool {
		return notHidden(n) && strings.HasSuffix(n, ".deb")
	})
	if pruneRootfs {
		removeExcept(b.rootfsDir(), keepRootfs, notHidden)
	}
}

// removeLeftovers deletes work files of builds that died midway. Only
// called under the lock, so none of them belongs to a live build.
func (b *Builder) removeLeftovers() {
	for _, dir := range []string{b.Root.ImageDir(), b.Root.DownloadsDir(), b.kernelsDir(), b.initramfsDir(), b.rootfsDir()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, unpackPrefix) || strings.HasPrefix(n, buildPrefix) ||
				strings.HasPrefix(n, downloadPrefix) || strings.HasPrefix(n, tempPrefix) ||
				(strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-")) {
				if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
					b.log().Warn("remove leftover", "path", filepath.Join(dir, n), "err", err)
				}
			}
		}
	}
}

// cachedDigest is a binary's SHA-256 and the state of the file it is of.
type cachedDigest struct {
	sum string
	of  fileIdentity
}

// agentDigest checks the agent binary and returns its SHA-256.
func (b *Builder) agentDigest() (string, error) {
	return digestBinary("agent binary", b.AgentBinary, checkAgent, &b.agent)
}

// runtimeDigest checks the runtime binary and returns its SHA-256.
func (b *Builder) runtimeDigest() (string, error) {
	return digestBinary("runtime binary", b.RuntimeBinary, checkRuntime, &b.runtime)
}

// digestBinary checks the binary at path and returns its SHA-256. The
// digest is kept in c while the file stays the same one, unchanged
// (device, inode, size, modification and status-change times): otherwise
// every StartVm would read and hash the whole binary, ~30 ms here for the
// agent. Replacing or rewriting the file moves its change time, which no
// program can set back. Called with the build lock held.
func digestBinary(what, path string, check func(string) error, c *cachedDigest) (string, error) {
	if err := check(path); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	before, err := identify(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if c.sum != "" && before == c.of {
		return c.sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// Kept only if the file did not change while it was read.
	if after, err := identify(f); err == nil && after == before {
		*c = cachedDigest{sum: sum, of: before}
	}
	return sum, nil
}

// fileIdentity is what tells one state of a file from another without
// reading it.
type fileIdentity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func identify(f *os.File) (fileIdentity, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileIdentity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileIdentity{}, fmt.Errorf("%s: no stat data", f.Name())
	}
	return fileIdentity{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// lock serialises builds: a channel for goroutines of this process (so a
// waiter can give up with its context), flock for other processes.
func (b *Builder) lock(ctx context.Context) (unlock func(), err error) {
	b.once.Do(func() { b.sem = make(chan struct{}, 1) })
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	release := func() { <-b.sem }
	if err := os.MkdirAll(b.Root.ImageDir(), 0o755); err != nil {
		release()
		return nil, fmt.Errorf("image cache: %w", err)
	}
	f, err := os.OpenFile(b.Root.ImageLock(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		release()
		return nil, fmt.Errorf("image lock: %w", err)
	}
	// flock cannot be interrupted by a context, so poll without blocking.
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			release()
			return nil, fmt.Errorf("image lock: %w", err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			f.Close()
			release()
			return nil, ctx.Err()
		}
	}
	return func() {
		f.Close() // drops the flock
		release()
	}, nil
}

// kernelsDir, initramfsDir and rootfsDir are the parents of statedir's
// KernelDir, Initramfs and RootfsDir paths, derived from them so statedir
// stays the one place that names them.
func (b *Builder) kernelsDir() string   { return filepath.Dir(b.Root.KernelDir("x")) }
func (b *Builder) initramfsDir() string { return filepath.Dir(b.Root.Initramfs("x")) }
func (b *Builder) rootfsDir() string    { return filepath.Dir(b.Root.RootfsDir("x")) }

// safeElement reports whether s can be used as one path element.
func safeElement(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && filepath.Base(s) == s
}

func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// writeAtomic creates path through a temporary file in the same directory,
// renamed into place only once fill succeeded and the data is synced, so a
// reader never sees a partial file and a crash leaves none behind.
func writeAtomic(path string, perm os.FileMode, fill func(*os.File) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
