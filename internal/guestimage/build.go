package guestimage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// build asks apt for the candidates and builds the image from them.
func (b *Builder) build(ctx context.Context, sums digests, force bool, progress func(Progress)) (img Image, err error) {
	if b.Observe != nil {
		started := time.Now()
		defer func() { b.Observe(time.Since(started), img.Built, err) }()
	}
	rep := b.reporter(progress)
	rep.Step("checking apt for the guest kernel")
	src := b.packages()
	// Taken before the candidates are read, so lists that change meanwhile
	// are checked again.
	state, err := src.ListsState()
	if err != nil {
		b.log().Warn("apt lists unreadable; the next start will ask apt again", "err", err)
		state = ""
	}
	cand, err := b.candidates(ctx, src, sums)
	if err != nil {
		return Image{}, err
	}
	return b.buildFrom(ctx, sums, force, state, cand, rep)
}

// candidates are apt's candidates, with the kernel given as a file in
// place of Debian's when there is one.
func (b *Builder) candidates(ctx context.Context, src packageSource, sums digests) (candidates, error) {
	cand, err := src.Candidates(ctx)
	if err != nil {
		return candidates{}, err
	}
	if sums.kernel.Name != "" {
		cand.Kernel = sums.kernel
	}
	return cand, nil
}

// buildFrom builds the image from cand, downloading what the cache lacks,
// and records it in the manifest with aptState, the lists' fingerprint
// cand was read under. force rebuilds the initramfs, not the container
// root filesystems: a generation in place may be in use, and is never
// changed.
func (b *Builder) buildFrom(ctx context.Context, sums digests, force bool, aptState string, cand candidates, rep *reporter) (Image, error) {
	log := b.log()
	started := time.Now()
	for _, d := range []string{b.Root.DownloadsDir(), b.kernelsDir(), b.initramfsDir(), b.rootfsDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Image{}, fmt.Errorf("image cache: %w", err)
		}
	}
	b.removeLeftovers()

	kpkg, userland := cand.Kernel, cand.Userland
	var (
		kdirName    string
		kinfo       *kernelInfo
		kernelBuilt bool
		err         error
	)
	switch {
	case sums.kernel.Name != "":
		kpkg = sums.kernel
		kdirName, kinfo, kernelBuilt, err = b.ensureCustomKernel(ctx, kpkg, rep)
	case kpkg.Name == customKernelPackage:
		err = fmt.Errorf("guest kernel: the image was built with a kernel file (%s), and none is given now", kpkg.Version)
	default:
		kdirName, kinfo, kernelBuilt, err = b.ensureKernel(ctx, kpkg, rep)
	}
	if err != nil {
		return Image{}, err
	}
	if err := b.ensureDebs(ctx, userland, rep); err != nil {
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
		RootfsDir:     rootfsKey(userland, sums.runtime, kpkg, kinfo.Late),
		BootModules:   kinfo.Boot,
		LateModules:   kinfo.Late,
		WantBoot:      kinfo.WantBoot,
		WantLate:      kinfo.WantLate,
		AptState:      aptState,
	}
	m.Key = cacheKey(sums, kpkg, userland, kinfo.Boot, kinfo.Late)
	initrd := b.Root.Initramfs(m.Key)
	// The file is named by the digest of its inputs and written
	// atomically, so if it exists it is complete and current; so is a
	// generation in place.
	needInitrd := true
	if st, err := os.Stat(initrd); err == nil && st.Mode().IsRegular() && !force {
		m.InitramfsBytes = st.Size()
		needInitrd = false
	}
	needRootfs := !rootfsComplete(b.Root.RootfsDir(m.RootfsDir))
	var initrdBuilt, rootfsBuilt bool
	if needInitrd || needRootfs {
		in, err := b.unpackInputs(ctx, userland, b.Root.KernelDir(kdirName), kinfo, sums)
		if err != nil {
			return Image{}, err
		}
		defer in.remove()
		if rootfsBuilt, err = b.ensureRootfs(m.RootfsDir, in, rep); err != nil {
			return Image{}, err
		}
		if needInitrd {
			rep.Step("building the initramfs")
			if m.InitramfsBytes, err = writeInitramfs(initrd, in); err != nil {
				return Image{}, err
			}
			initrdBuilt = true
		}
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

// ensureDebs keeps the userland packages in DownloadsDir, downloading those
// apt has a new version of. They are small and every initramfs build
// unpacks them, so they are not worth fetching again.
func (b *Builder) ensureDebs(ctx context.Context, pkgs []pkgRef, rep *reporter) error {
	for _, p := range pkgs {
		if _, err := os.Stat(b.debPath(p)); err == nil {
			continue
		}
		// Small: a step each, without the byte count, which would cost an
		// apt run per package to learn the size.
		rep.Step("downloading " + p.String())
		if _, err := b.packages().Download(ctx, p, b.Root.DownloadsDir(), nil); err != nil {
			return fmt.Errorf("guest userland: %w", err)
		}
	}
	return nil
}

func (b *Builder) debPath(p pkgRef) string {
	return filepath.Join(b.Root.DownloadsDir(), debFileName(p))
}
