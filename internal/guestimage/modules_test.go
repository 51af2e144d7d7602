package guestimage

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testKO is a synthetic kernel module: a relocatable ELF whose .modinfo
// holds the given key=value strings.
func testKO(info ...string) []byte {
	var data []byte
	for _, kv := range info {
		data = append(append(data, kv...), 0)
	}
	return buildELF(elf.ET_REL, "", []testSection{
		{name: ".text", typ: elf.SHT_PROGBITS, data: []byte{0xc3}},
		{name: ".modinfo", typ: elf.SHT_PROGBITS, data: data},
	})
}

// fakeModuleTree lays out a lib/modules/<release> tree modelled on
// Debian 6.1's: the virtio chain, ext4 with a softdep on an alias two
// modules provide, file names with '-' where the module name has '_', and a
// built-in module.
func fakeModuleTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	mods := map[string][]string{
		"kernel/drivers/virtio/virtio_ring.ko":        {"license=GPL", "depends=", "name=virtio_ring"},
		"kernel/drivers/virtio/virtio.ko":             {"depends=virtio_ring", "name=virtio"},
		"kernel/drivers/virtio/virtio_mmio.ko":        {"alias=of:N*T*Cvirtio,mmio", "depends=virtio,virtio_ring", "name=virtio_mmio"},
		"kernel/drivers/char/virtio_console.ko":       {"alias=virtio:d00000003v*", "depends=virtio,virtio_ring", "name=virtio_console"},
		"kernel/drivers/block/virtio_blk.ko":          {"depends=virtio,virtio_ring", "name=virtio_blk"},
		"kernel/drivers/char/hw_random/virtio-rng.ko": {"depends=virtio,virtio_ring", "name=virtio_rng"},
		"kernel/fs/ext4/ext4.ko": {"softdep=pre: crypto-crc32c", "alias=fs-ext4", "alias=ext3",
			"depends=jbd2,mbcache,crc16", "name=ext4"},
		"kernel/fs/jbd2/jbd2.ko":          {"depends=", "name=jbd2"},
		"kernel/fs/mbcache.ko":            {"depends=", "name=mbcache"},
		"kernel/lib/crc16.ko":             {"depends=", "name=crc16"},
		"kernel/crypto/crc32c_generic.ko": {"alias=crypto-crc32c-generic", "alias=crc32c-generic", "alias=crypto-crc32c", "alias=crc32c", "depends=", "name=crc32c_generic"},
		"kernel/arch/x86/crypto/crc32c-intel.ko": {"alias=crypto-crc32c-intel", "alias=crc32c-intel", "alias=crypto-crc32c",
			"alias=crc32c", "depends=", "name=crc32c_intel"},
		"kernel/net/vmw_vsock/vsock.ko":                             {"depends=", "name=vsock"},
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko": {"depends=vsock", "name=vmw_vsock_virtio_transport_common"},
		"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko":        {"depends=virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock", "name=vmw_vsock_virtio_transport"},
		// A q35 VM's virtio devices are PCI devices.
		"kernel/drivers/virtio/virtio_pci.ko":            {"depends=virtio_pci_modern_dev,virtio,virtio_ring", "name=virtio_pci"},
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko": {"depends=", "name=virtio_pci_modern_dev"},

		// Not asked for: must stay out.
		"kernel/drivers/gpu/drm/virtio/virtio-gpu.ko": {"depends=virtio,virtio_ring,drm", "name=virtio_gpu"},
	}
	for rel, info := range mods {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, testKO(info...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "modules.builtin"), []byte("kernel/fs/overlayfs/overlay.ko\nkernel/net/9p/9pnet.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func modPaths(ms []*module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Path)
	}
	return out
}

func modNames(ms []*module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

// before checks that a comes before b in order.
func before(t *testing.T, order []string, a, b string) {
	t.Helper()
	ia, ib := slices.Index(order, a), slices.Index(order, b)
	if ia < 0 || ib < 0 || ia > ib {
		t.Errorf("%s should load before %s in %q", a, b, order)
	}
}

func TestModuleSets(t *testing.T) {
	ix, err := indexModules(context.Background(), fakeModuleTree(t))
	if err != nil {
		t.Fatal(err)
	}
	if m := ix.byName["crc32c_intel"]; m == nil || m.Path != "kernel/arch/x86/crypto/crc32c-intel.ko" {
		t.Fatalf("crc32c_intel indexed as %+v", m)
	}
	boot, late, warnings, err := ix.moduleSets()
	if err != nil {
		t.Fatal(err)
	}
	wantBoot := []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_pci_modern_dev", "virtio_pci", "virtio_console"}
	if got := modNames(boot); !slices.Equal(got, wantBoot) {
		t.Errorf("boot = %q, want %q", got, wantBoot)
	}
	lateNames := modNames(late)
	for _, m := range []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_console"} {
		if slices.Contains(lateNames, m) {
			t.Errorf("late repeats boot module %s", m)
		}
	}
	for _, m := range []string{"virtio_blk", "virtio_rng", "ext4", "jbd2", "mbcache", "crc16", "crc32c_generic", "crc32c_intel",
		"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"} {
		if !slices.Contains(lateNames, m) {
			t.Errorf("late lacks %s: %q", m, lateNames)
		}
	}
	if slices.Contains(lateNames, "virtio_gpu") {
		t.Error("late holds virtio_gpu, which nothing asked for")
	}
	before(t, lateNames, "crc32c_generic", "ext4")
	before(t, lateNames, "crc32c_intel", "ext4")
	before(t, lateNames, "jbd2", "ext4")
	before(t, lateNames, "vsock", "vmw_vsock_virtio_transport_common")
	before(t, lateNames, "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport")
	if !slices.Contains(modPaths(late), "kernel/drivers/char/hw_random/virtio-rng.ko") {
		t.Errorf("virtio_rng not found under its dashed file name: %q", modPaths(late))
	}
	// overlay and 9pnet are built in: fine. virtio_net, 9p and
	// 9pnet_virtio are nowhere: warnings, not errors.
	joined := strings.Join(warnings, "\n")
	for _, m := range []string{"virtio_net", "9p", "9pnet_virtio"} {
		if !strings.Contains(joined, "no module "+m+"\n") && !strings.HasSuffix(joined, "no module "+m) {
			t.Errorf("no warning for missing %s in %q", m, warnings)
		}
	}
	if strings.Contains(joined, "overlay") {
		t.Errorf("built-in overlay reported missing: %q", warnings)
	}

	// Same tree, same answer: the order must not depend on map iteration.
	for range 5 {
		ix2, err := indexModules(context.Background(), ix.root)
		if err != nil {
			t.Fatal(err)
		}
		_, late2, _, _ := ix2.moduleSets()
		if !slices.Equal(modPaths(late2), modPaths(late)) {
			t.Fatalf("late order changed between runs: %q vs %q", modPaths(late2), modPaths(late))
		}
	}
}

func TestModuleSetsErrors(t *testing.T) {
	t.Run("boot module missing", func(t *testing.T) {
		root := fakeModuleTree(t)
		os.Remove(filepath.Join(root, "kernel/drivers/char/virtio_console.ko"))
		ix, err := indexModules(context.Background(), root)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := ix.moduleSets(); err == nil || !strings.Contains(err.Error(), "no module virtio_console") {
			t.Fatalf("error %v, want one naming virtio_console", err)
		}
	})
	t.Run("dependency missing", func(t *testing.T) {
		root := fakeModuleTree(t)
		os.Remove(filepath.Join(root, "kernel/drivers/virtio/virtio_ring.ko"))
		ix, err := indexModules(context.Background(), root)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := ix.moduleSets(); err == nil || !strings.Contains(err.Error(), "depends on virtio_ring") {
			t.Fatalf("error %v, want one naming virtio_ring", err)
		}
	})
	t.Run("hard cycle", func(t *testing.T) {
		root := t.TempDir()
		os.WriteFile(filepath.Join(root, "a.ko"), testKO("depends=b", "name=a"), 0o644)
		os.WriteFile(filepath.Join(root, "b.ko"), testKO("depends=a", "name=b"), 0o644)
		ix, err := indexModules(context.Background(), root)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := ix.resolve([]string{"a"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
			t.Fatalf("error %v, want a cycle", err)
		}
	})
	t.Run("not a module", func(t *testing.T) {
		root := t.TempDir()
		os.WriteFile(filepath.Join(root, "junk.ko"), []byte("not an ELF"), 0o644)
		if _, err := indexModules(context.Background(), root); err == nil || !strings.Contains(err.Error(), "junk.ko") {
			t.Fatalf("error %v, want one naming junk.ko", err)
		}
	})
}

func TestSoftdepCycleIsNotFatal(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "a.ko"), testKO("softdep=pre: b post: c", "name=a"), 0o644)
	os.WriteFile(filepath.Join(root, "b.ko"), testKO("softdep=pre: a", "name=b"), 0o644)
	os.WriteFile(filepath.Join(root, "c.ko"), testKO("name=c"), 0o644)
	ix, err := indexModules(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	order, missing, err := ix.resolve([]string{"a"}, nil)
	if err != nil || len(missing) > 0 {
		t.Fatalf("resolve: %v, missing %q", err, missing)
	}
	// post: c is not a load-time need.
	if got := modNames(order); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("order %q, want [b a]", got)
	}
}

func TestParseModinfo(t *testing.T) {
	m := parseModinfo([]byte("license=GPL\x00depends=virtio,virtio-ring,\x00softdep=pre: crc32c  foo post: bar\x00alias=fs-ext4\x00name=my-mod\x00garbage\x00"))
	if m.Name != "my_mod" {
		t.Errorf("name %q", m.Name)
	}
	if !slices.Equal(m.Depends, []string{"virtio", "virtio_ring"}) {
		t.Errorf("depends %q", m.Depends)
	}
	if !slices.Equal(m.PreDeps, []string{"crc32c", "foo"}) {
		t.Errorf("pre %q", m.PreDeps)
	}
	if !slices.Equal(m.Aliases, []string{"fs_ext4"}) {
		t.Errorf("aliases %q", m.Aliases)
	}
}

// TestCompressedModules checks .ko.xz and .ko.zst become plain .ko files
// that index like the others.
func TestCompressedModules(t *testing.T) {
	for _, tc := range []struct{ tool, ext string }{{"xz", ".xz"}, {"zstd", ".zst"}} {
		t.Run(tc.tool, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("%s not installed: cannot make compressed modules", tc.tool)
			}
			root := t.TempDir()
			dir := filepath.Join(root, "kernel", "drivers")
			os.MkdirAll(dir, 0o755)
			for _, m := range [][]string{{"virtio_ring", ""}, {"virtio", "virtio_ring"}} {
				p := filepath.Join(dir, m[0]+".ko")
				if err := os.WriteFile(p, testKO("depends="+m[1], "name="+m[0]), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"-q", p}
				if tc.tool == "zstd" {
					args = []string{"-q", "--rm", p}
				}
				if out, err := exec.Command(tc.tool, args...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v: %s", tc.tool, err, out)
				}
				if _, err := os.Stat(p + tc.ext); err != nil {
					t.Fatal(err)
				}
			}
			if err := decompressModules(context.Background(), root); err != nil {
				t.Fatal(err)
			}
			ix, err := indexModules(context.Background(), root)
			if err != nil {
				t.Fatal(err)
			}
			order, missing, err := ix.resolve([]string{"virtio"}, nil)
			if err != nil || len(missing) > 0 {
				t.Fatalf("resolve: %v, missing %q", err, missing)
			}
			if got := modPaths(order); !slices.Equal(got, []string{"kernel/drivers/virtio_ring.ko", "kernel/drivers/virtio.ko"}) {
				t.Errorf("order %q", got)
			}
			left, _ := filepath.Glob(filepath.Join(dir, "*"+tc.ext))
			if len(left) > 0 {
				t.Errorf("compressed files left: %q", left)
			}
		})
	}
}
