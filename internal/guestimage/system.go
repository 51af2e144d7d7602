package guestimage

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// What boot does not need lives in the container root filesystems'
// share, beside the busybox tree, in bootcfg.SystemDir: cabin-runtime,
// the dynamically linked programs' files (programs.go), zoneinfo and the
// late modules but those that mounting the share needs. The initramfs
// links each of those files' usual guest paths into bootcfg.SystemRoot,
// where the agent mounts the share once it serves. A generation holds
// both trees and is named by the digest of all that went into it
// (rootfsKey), so a new cabin-runtime, package or kernel is a new
// generation, and a running VM's files never change under it.

// shareModuleNames are the late modules the agent needs to mount the
// share: they stay in the initramfs (bootcfg.ShareModules), with what they
// depend on.
var shareModuleNames = []string{"9p", "9pnet_virtio"}

// inputs are what an image's initramfs and generation are built from:
// the userland packages unpacked in work, and the host's binaries.
type inputs struct {
	work     string
	busybox  string
	applets  []string
	zoneRoot string
	zones    []zoneEntry
	programs []guestFile
	modRoot  string
	// boot and share are the modules the initramfs carries; late those
	// the share does. Paths relative to modRoot, in load order.
	boot, share, late   []string
	agent, agentSHA     string
	runtime, runtimeSHA string
}

// unpackInputs unpacks userland into a work directory under the image
// directory and reads what the image needs from it. Call remove when done.
func (b *Builder) unpackInputs(ctx context.Context, userland []pkgRef, kdir string, info *kernelInfo, sums digests) (*inputs, error) {
	work, err := os.MkdirTemp(b.Root.ImageDir(), buildPrefix)
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	in := &inputs{
		work: work, modRoot: filepath.Join(kdir, modulesSubdir), boot: info.Boot,
		agent: b.AgentBinary, agentSHA: sums.agent, runtime: b.RuntimeBinary, runtimeSHA: sums.runtime,
	}
	if err := in.read(ctx, userland, b.debPath, info); err != nil {
		in.remove()
		return nil, fmt.Errorf("guest image: %w", err)
	}
	return in, nil
}

func (in *inputs) remove() { os.RemoveAll(in.work) }

func (in *inputs) read(ctx context.Context, userland []pkgRef, deb func(pkgRef) string, info *kernelInfo) error {
	if _, ok := findPackage(userland, busyboxPackage); !ok {
		return fmt.Errorf("no %s among the packages %v", busyboxPackage, userland)
	}
	// Each package is unpacked whole, into a directory named after it:
	// together they are a few MB, not worth streaming single files out of.
	for _, p := range userland {
		if err := debExtract(ctx, deb(p), filepath.Join(in.work, p.Name)); err != nil {
			return err
		}
	}
	in.busybox = filepath.Join(in.work, busyboxPackage, "bin", "busybox")
	if st, err := os.Lstat(in.busybox); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("%s has no regular file bin/busybox", busyboxPackage)
	}
	// Checked like the agent: it runs in a guest without a libc (and in
	// containers, which have none either), and we are about to run it
	// here.
	if err := checkStatic("busybox from "+busyboxPackage, in.busybox, ""); err != nil {
		return err
	}
	var err error
	if in.applets, err = busyboxApplets(ctx, in.busybox); err != nil {
		return err
	}
	in.zoneRoot = filepath.Join(in.work, tzdataPackage, "usr", "share", "zoneinfo")
	if in.zones, err = zoneinfoEntries(in.zoneRoot); err != nil {
		return fmt.Errorf("%s: %w", tzdataPackage, err)
	}
	if in.programs, err = programFiles(in.work, programPackages, programs...); err != nil {
		return err
	}
	if in.share, in.late, err = splitLate(ctx, in.modRoot, info.Boot, info.Late); err != nil {
		return err
	}
	return nil
}

// splitLate divides the late modules into those mounting the share needs
// (shareModuleNames and their dependencies, for the initramfs) and the
// rest (for the share), each in load order. A kernel without 9p modules
// has none to split off: 9p is built in, or the share cannot be mounted,
// which the agent reports.
func splitLate(ctx context.Context, modRoot string, boot, late []string) (share, rest []string, err error) {
	if len(late) == 0 {
		return nil, nil, nil
	}
	ix, err := indexModules(ctx, modRoot)
	if err != nil {
		return nil, nil, err
	}
	have := map[string]bool{}
	for _, m := range ix.byName {
		if slices.Contains(boot, m.Path) {
			have[m.Name] = true
		}
	}
	order, _, err := ix.resolve(shareModuleNames, have)
	if err != nil {
		return nil, nil, fmt.Errorf("share modules: %w", err)
	}
	in := map[string]bool{}
	for _, m := range order {
		if !slices.Contains(late, m.Path) {
			return nil, nil, fmt.Errorf("share modules: %s is not among the late modules", m.Path)
		}
		in[m.Path] = true
	}
	// In the late list's order, which is a load order already.
	for _, p := range late {
		if in[p] {
			share = append(share, p)
		} else {
			rest = append(rest, p)
		}
	}
	return share, rest, nil
}

// systemHostPath is where, under dir (a generation's SystemDir), the file
// the guest knows as guest goes. guest must be absolute and clean.
func systemHostPath(dir, guest string) (string, error) {
	if !path.IsAbs(guest) || path.Clean(guest) != guest || guest == "/" || strings.ContainsRune(guest, 0) {
		return "", fmt.Errorf("guest path %q: not a clean absolute path", guest)
	}
	return filepath.Join(dir, filepath.FromSlash(guest[1:])), nil
}

// writeSystem writes the SystemDir tree into dir, which must not exist:
// cabin-runtime (checked against its digest as it is copied), the
// programs' regular files, zoneinfo and the late modules.
func writeSystem(dir string, in *inputs) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	place := func(guest string) (string, error) {
		p, err := systemHostPath(dir, guest)
		if err != nil {
			return "", err
		}
		return p, os.MkdirAll(filepath.Dir(p), 0o755)
	}
	if in.runtime == "" {
		return fmt.Errorf("runtime: no cabin-runtime binary given")
	}
	dst, err := place(bootcfg.RuntimeBinary)
	if err != nil {
		return err
	}
	if err := copyChecked(dst, in.runtime, in.runtimeSHA); err != nil {
		return fmt.Errorf("runtime: %w", err)
	}
	for _, f := range in.programs {
		if f.Target != "" {
			continue // a link: the initramfs has it
		}
		dst, err := place(f.Name)
		if err != nil {
			return err
		}
		if err := copyFile(dst, f.Src, f.Mode); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
	}
	zdir, err := place(bootcfg.Zoneinfo)
	if err != nil {
		return err
	}
	if len(in.zones) > 0 {
		if err := os.Mkdir(zdir, 0o755); err != nil {
			return err
		}
	}
	for _, z := range in.zones {
		// Checked again, as module paths are: this is the last stop before
		// a host path is opened and written.
		if err := checkZonePath(z.Rel); err != nil {
			return err
		}
		dst := filepath.Join(zdir, filepath.FromSlash(z.Rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if z.Target != "" {
			if !zoneLinkInside(z.Rel, z.Target) {
				return fmt.Errorf("zoneinfo link %q -> %q: leaves the tree", z.Rel, z.Target)
			}
			if err := os.Symlink(z.Target, dst); err != nil {
				return err
			}
			continue
		}
		if err := copyFile(dst, filepath.Join(in.zoneRoot, filepath.FromSlash(z.Rel)), 0o644); err != nil {
			return fmt.Errorf("zoneinfo: %w", err)
		}
	}
	for _, rel := range in.late {
		if err := checkModulePath(rel); err != nil {
			return err
		}
		dst, err := place(path.Join(bootcfg.ModulesDir, rel))
		if err != nil {
			return err
		}
		if err := copyFile(dst, filepath.Join(in.modRoot, filepath.FromSlash(rel)), 0o644); err != nil {
			return fmt.Errorf("module: %w", err)
		}
	}
	return nil
}

// copyChecked copies src to dst (mode 0755), checking that what is written
// is the file whose digest (sum) names the image, as addChecked does for
// the initramfs.
func copyChecked(dst, src, sum string) error {
	h := sha256.New()
	if err := copyFileTee(dst, src, 0o755, h); err != nil {
		return err
	}
	return checkDigest(src, h, sum)
}

// systemComplete reports whether a generation's SystemDir is there: like
// rootfsComplete, a guard against damage from outside.
func systemComplete(dir string) bool {
	p, err := systemHostPath(filepath.Join(dir, bootcfg.SystemDir), bootcfg.RuntimeBinary)
	if err != nil {
		return false
	}
	st, err := os.Lstat(p)
	return err == nil && st.Mode().IsRegular()
}
