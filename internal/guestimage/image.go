// Package guestimage builds and caches the guest image cabind boots: an
// uncompressed vmlinux taken from Debian's linux-image-amd64 (booted
// directly through its PVH entry point); an initramfs holding what boot
// needs: the static cabin-agent as /init, busybox-static, and the kernel
// modules the agent loads to reach the host and mount the share; and the
// share every VM gets read-only (see rootfs.go), with the container root
// filesystems and what the initramfs links to (system.go): the static
// cabin-runtime, tzdata's zoneinfo, Debian's iptables and e2fsprogs with
// the libraries and loader they need (programs.go), the late modules.
// Everything lives under the state dir's image directory; the host's own
// /boot and /lib are never touched.
package guestimage

import (
	"context"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/statedir"
)

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
	// Observe, when set, is told of every check of the image: how long
	// it took, whether anything was built and how it failed.
	Observe func(d time.Duration, built bool, err error)
	// Kernel, when set, is the absolute path of an uncompressed PVH
	// vmlinux to boot instead of Debian's (scripts/kernel/build.sh builds
	// cabin's own). It gets no modules: what the guest needs must be built
	// in, which is checked against the configuration beside it (.config or
	// config) when there is one. The image holds a copy, named by the
	// file's digest, so a changed file is a new image.
	Kernel string

	// apt is where packages come from; nil means the host's apt.
	apt packageSource

	once sync.Once
	sem  chan struct{} // one build at a time in this process

	// The binaries' and the kernel file's last digests and the file
	// states they are of; guarded by the build lock.
	agent, runtime, kernel cachedDigest

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
func (b *Builder) Ensure(ctx context.Context, progress func(Progress)) (Image, error) {
	unlock, sums, err := b.lockAndDigest(ctx)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	return b.ensure(ctx, sums, progress)
}

// ensure is Ensure under the build lock.
func (b *Builder) ensure(ctx context.Context, sums digests, progress func(Progress)) (Image, error) {
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
		!slices.Equal(pkgNames(m.Userland), userlandPackages) || (m.Kernel.Name == customKernelPackage && sums.kernel.Name == "") {
		return img, err
	}
	// The last image's packages are most likely still here: its kernel
	// unpacked, its userland downloaded. Its apt state is kept, so the
	// lists still count as not checked.
	b.log().Warn("cannot build the guest image from apt's packages; building it from the last image's",
		"kernel", m.Kernel.String(), "err", err)
	last := candidates{Kernel: m.Kernel, Userland: m.Userland}
	if img, lerr := b.buildFrom(ctx, sums, false, m.AptState, last, b.reporter(progress)); lerr == nil {
		return img, nil
	}
	return Image{}, err
}

// Rootfs returns the directory of the container root filesystems (see
// Image.Rootfs) for a VM that boots a kernel and initramfs of its own:
// those of the cached image, without checking the binaries or asking apt
// whether it is current, which is Ensure's work when a VM boots the
// image. Only when there are none does it ensure the whole image.
func (b *Builder) Rootfs(ctx context.Context, progress func(Progress)) (string, error) {
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
func (b *Builder) update(ctx context.Context, m *manifest, img Image, sums digests, progress func(Progress)) (Image, error) {
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
	rep := b.reporter(progress)
	rep.Step("checking apt for a newer guest kernel")
	have := candidates{Kernel: m.Kernel, Userland: m.Userland}
	cand, err := b.candidates(ctx, src, sums)
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
	next, err := b.buildFrom(ctx, sums, false, state, cand, rep)
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
			progress(Progress{Step: "update failed; using the cached image"})
		}
		return img, nil
	}
	return next, nil
}

// Build checks apt for the current kernel and userland packages, downloads
// and unpacks those that changed, and rebuilds the initramfs unless current
// (or force). Unlike Ensure, it fails if it cannot.
func (b *Builder) Build(ctx context.Context, force bool, progress func(Progress)) (Image, error) {
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

// cached returns the image m describes if its files are all there and it
// was built by this code from these binaries.
func (b *Builder) cached(m *manifest, sums digests) (Image, bool) {
	if m.Format != builderFormat || m.AgentSHA256 != sums.agent || m.RuntimeSHA256 != sums.runtime || !isHexDigest(m.Key) ||
		!slices.Equal(pkgNames(m.Userland), userlandPackages) ||
		!slices.Equal(m.WantBoot, bootModuleNames) || !slices.Equal(m.WantLate, lateModuleNames) ||
		m.Key != cacheKey(sums, m.Kernel, m.Userland, m.BootModules, m.LateModules) ||
		(sums.kernel.Name != "" && m.Kernel != sums.kernel) || (sums.kernel.Name == "" && m.Kernel.Name == customKernelPackage) ||
		!safeElement(m.KernelDir) || m.RootfsDir != rootfsKey(m.Userland, sums.runtime, m.Kernel, m.LateModules) {
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

// Cached is the image the cache holds as the last build left it, and when
// that was, without checking that it is current or building anything.
func (b *Builder) Cached() (Image, time.Time, bool) {
	m, err := b.readManifest()
	if err != nil {
		return Image{}, time.Time{}, false
	}
	built, _ := time.Parse(time.RFC3339, m.BuiltAt)
	return b.image(m, false), built, true
}

func (b *Builder) image(m *manifest, built bool) Image {
	version := m.KernelRelease + " (" + m.Kernel.Version + ")"
	if m.Kernel.Name == customKernelPackage {
		version = m.KernelRelease + " (file " + m.Kernel.Version + ")"
	}
	return Image{
		KernelVersion:  version,
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

// reporter returns the reporter of a build that logs its steps and
// reports them to progress, which may be nil.
func (b *Builder) reporter(progress func(Progress)) *reporter {
	return &reporter{log: b.log(), progress: progress}
}

func pkgNames(ps []pkgRef) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
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
