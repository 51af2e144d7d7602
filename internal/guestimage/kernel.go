package guestimage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// kernelFormat versions what this code unpacks from the kernel package:
// the vmlinux extraction and the module resolution (the module sets are
// compared on their own). Bumping it downloads the kernel package again;
// bumping builderFormat does not. It started at 2, the builder's format
// when the two were split, so caches from then are kept.
const kernelFormat = 2

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
func (b *Builder) ensureKernel(ctx context.Context, kpkg pkgRef, rep *reporter) (string, *kernelInfo, bool, error) {
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

	rep.Step("downloading " + kpkg.String())
	deb, err := b.packages().Download(ctx, kpkg, b.Root.DownloadsDir(), rep.Bytes)
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
	rep.Step("unpacking " + kpkg.String())
	if err := debExtract(ctx, deb, tree); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(out, modulesSubdir), 0o755); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}

	rep.Step("extracting vmlinux")
	vmlinuz := filepath.Join(tree, "boot", "vmlinuz-"+release)
	if st, err := os.Lstat(vmlinuz); err != nil || !st.Mode().IsRegular() {
		return "", nil, false, fmt.Errorf("guest kernel: %s has no boot/vmlinuz-%s", kpkg, release)
	}
	if err := ExtractVmlinux(ctx, vmlinuz, filepath.Join(out, vmlinuxName)); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}

	rep.Step("resolving modules")
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
