package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// customKernelPackage stands for a kernel given as a file (Builder.Kernel)
// where a Debian package's name goes: in the manifest and the cache key,
// with the file's digest as its version.
const customKernelPackage = "cabin-kernel-file"

// customDigestLen is how many hex digits of the file's SHA-256 name it.
const customDigestLen = 16

// checkCustomKernel checks a kernel given as a file: an x86-64 ELF QEMU
// can boot through its PVH entry, with what the guest needs built in when
// a configuration lies beside it to say so.
func checkCustomKernel(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%q is not an absolute path", path)
	}
	if err := checkPVH(path); err != nil {
		return err
	}
	cfg, at, err := readKernelConfig(path)
	if errors.Is(err, errNoKernelConfig) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kernel configuration %s: %w", at, err)
	}
	if _, err := checkBuiltIn(cfg); err != nil {
		return fmt.Errorf("%w (per %s)", err, at)
	}
	return nil
}

// CheckImageKernel checks a kernel file as Builder.Kernel would take it,
// so a daemon can refuse it at start rather than at the first VM.
func CheckImageKernel(path string) error {
	if err := checkCustomKernel(path); err != nil {
		return fmt.Errorf("guest kernel %s: %w", path, err)
	}
	return nil
}

// customKernelRef checks b.Kernel and returns it as the image's kernel:
// customKernelPackage at the file's digest. Called with the build lock
// held.
func (b *Builder) customKernelRef() (pkgRef, error) {
	sum, err := digestBinary("guest kernel "+b.Kernel, b.Kernel, checkCustomKernel, &b.kernel)
	if err != nil {
		return pkgRef{}, fmt.Errorf("guest kernel %s: %w", b.Kernel, err)
	}
	return pkgRef{Name: customKernelPackage, Version: sum[:customDigestLen]}, nil
}

// customKernelDir is the KernelDir element of a kernel given as a file.
func customKernelDir(ref pkgRef) string { return "file-" + ref.Version }

// ensureCustomKernel makes KernelDir hold a copy of the kernel file ref
// stands for (so the image never changes under a VM when the file does),
// with no modules: everything is built in. The copy is hashed as it is
// written and refused if the file changed since ref was taken.
func (b *Builder) ensureCustomKernel(ctx context.Context, ref pkgRef, rep *reporter) (string, *kernelInfo, bool, error) {
	name := customKernelDir(ref)
	kdir := b.Root.KernelDir(name)
	if info, err := readKernelInfo(kdir); err == nil && info.Format == kernelFormat && info.Package == ref &&
		len(info.Boot) == 0 && len(info.Late) == 0 && kernelDirComplete(kdir, info) {
		return name, info, false, nil
	}
	rep.Step("copying the guest kernel " + b.Kernel)
	stage, err := os.MkdirTemp(filepath.Dir(kdir), unpackPrefix)
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	defer os.RemoveAll(stage)
	dst := filepath.Join(stage, vmlinuxName)
	if err := copyHashed(ctx, b.Kernel, dst, ref.Version); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel %s: %w", b.Kernel, err)
	}
	release, err := bannerRelease(dst)
	if err != nil {
		return "", nil, false, fmt.Errorf("guest kernel %s: %w", b.Kernel, err)
	}
	if cfg, _, err := readKernelConfig(b.Kernel); err == nil {
		warnings, _ := checkBuiltIn(cfg)
		for _, w := range warnings {
			b.log().Warn("guest kernel lacks an option; the guest will lack what it provides", "kernel", b.Kernel, "problem", w)
		}
	} else {
		b.log().Warn("guest kernel not checked for what the guest needs", "kernel", b.Kernel, "err", err)
	}
	info := &kernelInfo{Format: kernelFormat, Package: ref, Release: release, WantBoot: bootModuleNames, WantLate: lateModuleNames}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return "", nil, false, err
	}
	if err := os.WriteFile(filepath.Join(stage, kernelInfoName), append(data, '\n'), 0o644); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.RemoveAll(kdir); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.Rename(stage, kdir); err != nil {
		return "", nil, false, fmt.Errorf("guest kernel: %w", err)
	}
	b.log().Info("guest kernel copied", "kernel", b.Kernel, "release", release, "digest", ref.Version)
	return name, info, true, nil
}

// copyHashed copies src to dst and fails unless the copy's SHA-256 starts
// with prefix.
func copyHashed(ctx context.Context, src, dst, prefix string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeAtomic(dst, 0o644, func(out *os.File) error {
		h := sha256.New()
		// A vmlinux is tens of MB: read whole, not worth a context check
		// per read.
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil))[:customDigestLen]; got != prefix {
			return fmt.Errorf("the file changed while it was copied (digest %s, expected %s)", got, prefix)
		}
		return nil
	})
}

// bannerPrefix starts the kernel's version banner (init/version.c's
// linux_banner), which names its release.
var bannerPrefix = []byte("Linux version ")

// bannerRelease reads a vmlinux's release from its version banner.
func bannerRelease(vmlinux string) (string, error) {
	data, err := os.ReadFile(vmlinux)
	if err != nil {
		return "", err
	}
	return releaseFromBanner(data)
}

// releaseFromBanner finds the first "Linux version RELEASE " in data
// whose RELEASE is a plausible release, a safe path element.
func releaseFromBanner(data []byte) (string, error) {
	for rest := data; ; {
		i := bytes.Index(rest, bannerPrefix)
		if i < 0 {
			return "", errors.New(`no "Linux version" banner: not a Linux kernel`)
		}
		rest = rest[i+len(bannerPrefix):]
		end := bytes.IndexByte(rest, ' ')
		if end > 0 && end <= 64 {
			if rel := string(rest[:end]); kernelReleaseRE.MatchString(rel) && !bytes.Contains(rest[:end], []byte("..")) {
				return rel, nil
			}
		}
	}
}
