package guestimage

import (
	"os"
	"path/filepath"
	"strings"
)

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
