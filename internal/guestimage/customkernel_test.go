package guestimage

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// fullConfig is a kernel configuration with everything the guest needs
// built in.
func fullConfig() map[string]string {
	cfg := map[string]string{}
	for _, m := range append(append([]string(nil), bootModuleNames...), lateModuleNames...) {
		cfg[moduleConfig[m]] = "y"
	}
	for _, sym := range guestKernelNeeds {
		cfg[sym] = "y"
	}
	return cfg
}

func writeConfig(t *testing.T, path string, cfg map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("#\n# Automatically generated file; DO NOT EDIT.\n#\n")
	for k, v := range cfg {
		b.WriteString(k + "=" + v + "\n")
	}
	b.WriteString("# CONFIG_MODULES is not set\n")
	putFile(t, path, b.String())
}

// fakeKernel writes a PVH vmlinux with a version banner into a directory
// of its own, with cfg beside it unless nil.
func fakeKernel(t *testing.T, release string, cfg map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinux")
	data := append(pvhELF(true), []byte("\x00Linux version "+release+" (cabin@cabin) (gcc) #1 SMP @0\n\x00")...)
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		writeConfig(t, filepath.Join(dir, ".config"), cfg)
	}
	return p
}

func TestCheckImageKernel(t *testing.T) {
	good := fakeKernel(t, "6.1.192", fullConfig())
	if err := CheckImageKernel(good); err != nil {
		t.Fatalf("a kernel with everything built in: %v", err)
	}
	if err := CheckImageKernel(fakeKernel(t, "6.1.192", nil)); err != nil {
		t.Errorf("a kernel without a configuration beside it is taken unchecked: %v", err)
	}
	noPVH := filepath.Join(t.TempDir(), "vmlinux")
	putFile(t, noPVH, string(pvhELF(false)))
	notELF := filepath.Join(t.TempDir(), "vmlinux")
	putFile(t, notELF, "#!/bin/sh\n")
	asModule := fullConfig()
	asModule["CONFIG_VIRTIO_CONSOLE"] = "m"
	noCgroups := fullConfig()
	delete(noCgroups, "CONFIG_MEMCG")
	for name, tc := range map[string]struct {
		path, want string
	}{
		"relative":          {"vmlinux", "not an absolute path"},
		"missing":           {filepath.Join(t.TempDir(), "nope"), "no such file"},
		"not an ELF":        {notELF, "not an ELF"},
		"no PVH note":       {noPVH, "XEN_ELFNOTE_PHYS32_ENTRY"},
		"console as module": {fakeKernel(t, "6.1.192", asModule), "CONFIG_VIRTIO_CONSOLE=m (virtio_console)"},
		"no memory cgroup":  {fakeKernel(t, "6.1.192", noCgroups), "CONFIG_MEMCG is not set"},
	} {
		err := CheckImageKernel(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
	// A missing late module is not fatal: the guest lacks what it gives.
	noLog := fullConfig()
	delete(noLog, "CONFIG_NETFILTER_XT_TARGET_LOG")
	warnings, err := checkBuiltIn(noLog)
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "CONFIG_NETFILTER_XT_TARGET_LOG") {
		t.Errorf("checkBuiltIn without xt_LOG = %v, %v", warnings, err)
	}
}

func TestReleaseFromBanner(t *testing.T) {
	for in, want := range map[string]string{
		"junk\x00Linux version 6.1.192 (cabin@cabin) #1":            "6.1.192",
		"Linux version %s (%s)\x00Linux version 6.1.0-56-amd64 (d)": "6.1.0-56-amd64",
		"Linux version ../../etc (x)\x00Linux version 6.2 (y)":      "6.2",
	} {
		if got, err := releaseFromBanner([]byte(in)); err != nil || got != want {
			t.Errorf("releaseFromBanner(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Linux version ", "Linux version  (x)", "no banner at all"} {
		if got, err := releaseFromBanner([]byte(in)); err == nil {
			t.Errorf("releaseFromBanner(%q) = %q, want an error", in, got)
		}
	}
}

// TestEnsureCustomKernel: a kernel file is copied into the cache under its
// digest, with no modules; the copy is reused while the file is the same,
// and a changed file is a new kernel.
func TestEnsureCustomKernel(t *testing.T) {
	f := newUpdateFixture(t)
	f.b.Kernel = fakeKernel(t, "6.1.192", fullConfig())
	ctx := context.Background()
	sums, err := f.b.digests()
	if err != nil {
		t.Fatal(err)
	}
	if sums.kernel.Name != customKernelPackage || len(sums.kernel.Version) != customDigestLen {
		t.Fatalf("kernel ref %+v", sums.kernel)
	}
	// The Debian image in the cache is not current for a kernel file.
	if _, ok := f.b.cached(f.manifest(t), sums); ok {
		t.Error("the cached image of Debian's kernel counts as current with a kernel file given")
	}
	rep := f.b.reporter(nil)
	name, info, built, err := f.b.ensureCustomKernel(ctx, sums.kernel, rep)
	if err != nil || !built {
		t.Fatalf("ensureCustomKernel = %v, %v", built, err)
	}
	if info.Release != "6.1.192" || len(info.Boot)+len(info.Late) != 0 || info.Package != sums.kernel {
		t.Errorf("kernel info %+v", info)
	}
	copied, err := os.ReadFile(filepath.Join(f.b.Root.KernelDir(name), vmlinuxName))
	orig, _ := os.ReadFile(f.b.Kernel)
	if err != nil || string(copied) != string(orig) {
		t.Fatalf("the cached vmlinux is not the file's copy: %v", err)
	}
	if _, _, built, err := f.b.ensureCustomKernel(ctx, sums.kernel, rep); err != nil || built {
		t.Errorf("second ensureCustomKernel = built %v, %v; want the cached copy", built, err)
	}
	// A file that changes between the check and the copy is refused.
	if err := os.WriteFile(f.b.Kernel, append(orig, 'x'), 0o755); err != nil {
		t.Fatal(err)
	}
	stale := pkgRef{Name: customKernelPackage, Version: strings.Repeat("0", customDigestLen)}
	if _, _, _, err := f.b.ensureCustomKernel(ctx, stale, rep); err == nil || !strings.Contains(err.Error(), "changed while it was copied") {
		t.Errorf("copy of a changed file: %v", err)
	}
	sums2, err := f.b.digests()
	if err != nil || sums2.kernel == sums.kernel {
		t.Errorf("a changed kernel file keeps its ref %+v (%v)", sums2.kernel, err)
	}
	// A kernel that lacks a boot module is refused before anything is built.
	f.b.Kernel = fakeKernel(t, "6.1.192", map[string]string{"CONFIG_VIRTIO_MMIO": "y"})
	if _, err := f.ensure(t, ctx); err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_CONSOLE") {
		t.Errorf("Ensure with a kernel lacking the console: %v", err)
	}
	// Back to Debian's kernel: its image is current again.
	f.b.Kernel = ""
	img, err := f.ensure(t, ctx)
	f.wantCached(t, img, err, 0)
}

func TestParseKernelConfig(t *testing.T) {
	cfg, err := parseKernelConfig(bufio.NewScanner(strings.NewReader("# c\n\nCONFIG_A=y\nCONFIG_B=\"x=y\"\n# CONFIG_C is not set\n")))
	if err != nil || cfg["CONFIG_A"] != "y" || cfg["CONFIG_B"] != `"x=y"` || len(cfg) != 2 {
		t.Errorf("parseKernelConfig = %v, %v", cfg, err)
	}
	for _, bad := range []string{"A=y\n", "CONFIG_A y\n", "CONFIG A=y\n"} {
		if _, err := parseKernelConfig(bufio.NewScanner(strings.NewReader(bad))); err == nil {
			t.Errorf("parseKernelConfig(%q) took it", bad)
		}
	}
}

func FuzzKernelFile(f *testing.F) {
	f.Add([]byte("Linux version 6.1.192 (cabin@cabin)"), []byte("CONFIG_A=y\n# x\n"))
	f.Add([]byte("Linux version ../x \x00Linux version 1 "), []byte("CONFIG_=\n"))
	f.Fuzz(func(t *testing.T, banner, config []byte) {
		if rel, err := releaseFromBanner(banner); err == nil {
			if !safeElement(rel) || !kernelReleaseRE.MatchString(rel) || strings.Contains(rel, "..") {
				t.Fatalf("release %q is not a safe element", rel)
			}
		}
		cfg, err := parseKernelConfig(bufio.NewScanner(strings.NewReader(string(config))))
		if err != nil {
			return
		}
		for k := range cfg {
			if !strings.HasPrefix(k, "CONFIG_") || strings.ContainsAny(k, " \t\n") {
				t.Fatalf("symbol %q", k)
			}
		}
		_, _ = checkBuiltIn(cfg)
	})
}

func TestKernelChoice(t *testing.T) {
	dir := t.TempDir()
	minimal := filepath.Join(dir, "current", "vmlinux")
	for _, choice := range []string{KernelGeneric, KernelAuto} {
		if p, note, err := KernelChoice(choice, minimal); err != nil || p != "" {
			t.Errorf("%s without a minimal kernel = %q (%s), %v; want Debian's", choice, p, note, err)
		}
	}
	if _, _, err := KernelChoice(KernelMinimal, minimal); err == nil || !strings.Contains(err.Error(), "make kernel") {
		t.Errorf("minimal, not built: %v", err)
	}
	// Built as build.sh leaves it: a key directory and "current" on it.
	built := fakeKernel(t, "6.1.192", fullConfig())
	if err := os.Symlink(filepath.Dir(built), filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	for _, choice := range []string{KernelAuto, KernelMinimal} {
		if p, _, err := KernelChoice(choice, minimal); err != nil || p != built {
			t.Errorf("%s = %q, %v; want %s", choice, p, err, built)
		}
	}
	if p, _, err := KernelChoice(built, minimal); err != nil || p != built {
		t.Errorf("a path = %q, %v", p, err)
	}
	for _, bad := range []string{"vmlinux", "../vmlinux", "", "Auto"} {
		if _, _, err := KernelChoice(bad, minimal); err == nil {
			t.Errorf("KernelChoice(%q) took it", bad)
		}
	}
	// A minimal kernel that lacks what the guest needs: auto falls back
	// to Debian's and says why, minimal refuses.
	writeConfig(t, filepath.Join(filepath.Dir(built), ".config"), map[string]string{"CONFIG_VIRTIO_MMIO": "y"})
	if p, note, err := KernelChoice(KernelAuto, minimal); err != nil || p != "" || !strings.Contains(note, "CONFIG_VIRTIO_CONSOLE") {
		t.Errorf("auto with a bad minimal kernel = %q (%s), %v", p, note, err)
	}
	if _, _, err := KernelChoice(KernelMinimal, minimal); err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_CONSOLE") {
		t.Errorf("minimal, bad: %v", err)
	}
}

// checkKernelFile builds the image around a kernel given as a file (here
// Debian's vmlinux from img, with a configuration beside it that says all
// is built in) and back: the image carries no modules then, names the
// kernel's release from its banner, and Debian's image is served from
// the cache again once the file is no longer given.
func checkKernelFile(t *testing.T, b *Builder, img Image) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "vmlinux")
	data, err := os.ReadFile(img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(dir, ".config"), fullConfig())
	b.Kernel = file
	got, err := b.Ensure(ctx, nil)
	b.Kernel = ""
	if err != nil {
		t.Fatalf("Ensure with a kernel file: %v", err)
	}
	release, _, _ := strings.Cut(img.KernelVersion, " ")
	if !got.Built || got.Kernel == img.Kernel || got.Initramfs == img.Initramfs ||
		!strings.HasPrefix(got.KernelVersion, release+" (file ") || got.Rootfs == img.Rootfs {
		t.Errorf("image with a kernel file: %+v (Debian's: %+v)", got, img)
	}
	// Its share's generation is its own (no late modules), and Debian's
	// stays as it was for the VMs that run it.
	if _, err := os.Lstat(filepath.Join(got.Rootfs, bootcfg.SystemDir, "lib", "modules")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the share of a kernel file carries modules: %v", err)
	}
	if !rootfsComplete(img.Rootfs) {
		t.Error("Debian's kernel's generation is gone")
	}
	if got.InitramfsBytes >= img.InitramfsBytes {
		t.Errorf("the initramfs without modules is %d bytes, with them %d", got.InitramfsBytes, img.InitramfsBytes)
	}
	cpio, err := os.ReadFile(got.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readCPIO(cpio)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name, ".ko") {
			t.Errorf("the initramfs of a kernel file carries module %s", e.Name)
		}
	}
	t.Logf("kernel file image: %s, initramfs %d bytes (Debian's with modules: %d)", got.KernelVersion, got.InitramfsBytes, img.InitramfsBytes)
	back, err := b.Ensure(ctx, nil)
	if err != nil || back.Built || back.Kernel != img.Kernel || back.Initramfs != img.Initramfs {
		t.Errorf("back to Debian's kernel: %+v, %v; want the cached %+v", back, err, img)
	}
}
