package guestimage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

// TestBuildDebian builds the real image from Debian's packages into a
// temporary state dir, then checks the cache answers without apt.
func TestBuildDebian(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads Debian's kernel package (~70 MB); skipped in -short mode")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: this test needs a Debian host with apt", tool)
		}
	}
	agent, runtime := staticAgent(t), staticRuntime(t)
	root := statedirtest.New(t)
	b := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: runtime, Log: testLogger(t)}
	ctx := context.Background()

	var steps []string
	start := time.Now()
	var downloads []Progress
	img, err := b.Build(ctx, false, func(p Progress) {
		if p.Total == 0 && p.Done == 0 {
			steps = append(steps, p.Step)
			return
		}
		downloads = append(downloads, p)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold build: %v, initramfs %d bytes, kernel %s, steps %q", time.Since(start).Round(time.Millisecond), img.InitramfsBytes, img.KernelVersion, steps)
	if !img.Built {
		t.Error("first build reports Built=false")
	}
	// The kernel's download was counted up to its size, as apt gives it.
	if len(downloads) == 0 {
		t.Error("a cold build reported no download progress")
	} else if last := downloads[len(downloads)-1]; last.Total <= 0 || last.Done != last.Total {
		t.Errorf("last download report %+v: want done = total > 0", last)
	}
	for _, p := range []string{img.Kernel, img.Initramfs, img.Rootfs} {
		if !strings.HasPrefix(p, root.ImageDir()+"/") {
			t.Errorf("%s is outside the image dir", p)
		}
	}
	if err := checkPVH(img.Kernel); err != nil {
		t.Errorf("vmlinux: %v", err)
	}
	if err := CheckKernel(img.Kernel); err != nil {
		t.Errorf("CheckKernel(vmlinux): %v", err)
	}
	if err := CheckInitramfs(img.Initramfs); err != nil {
		t.Errorf("CheckInitramfs: %v", err)
	}
	checkDebianInitramfs(t, img)
	checkDebianRootfs(t, img.Rootfs)

	// The 70 MB kernel package and the unpacked tree are gone; only what
	// the image uses is kept.
	if debs, _ := filepath.Glob(filepath.Join(root.DownloadsDir(), "linux-image-*")); len(debs) > 0 {
		t.Errorf("kernel package kept: %q", debs)
	}
	// The userland packages are kept, one .deb each.
	for _, name := range userlandPackages {
		if debs, _ := filepath.Glob(filepath.Join(root.DownloadsDir(), name+"_*.deb")); len(debs) != 1 {
			t.Errorf("%s: downloads hold %q, want one .deb", name, debs)
		}
	}
	var kept int64
	filepath.Walk(root.ImageDir(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			kept += fi.Size()
		}
		return nil
	})
	t.Logf("image dir holds %d MB", kept>>20)
	if kept > 200<<20 {
		t.Errorf("image dir holds %d MB: the unpacked package was not cleaned up", kept>>20)
	}

	// Nothing changed: Build asks apt (locally) and builds nothing.
	if again, err := b.Build(ctx, false, nil); err != nil || again.Built || again != withBuilt(img, false) {
		t.Errorf("second Build: %+v, %v; want the same image, not built", again, err)
	}
	// Forced: the same inputs give the same bytes.
	sum := fileDigest(t, img.Initramfs)
	if forced, err := b.Build(ctx, true, nil); err != nil || !forced.Built || forced.Initramfs != img.Initramfs {
		t.Errorf("forced Build: %+v, %v", forced, err)
	}
	if fileDigest(t, img.Initramfs) != sum {
		t.Error("forced rebuild from the same inputs changed the initramfs bytes")
	}

	// A new agent: a new initramfs, the same kernel, no kernel download.
	newAgent := filepath.Join(t.TempDir(), "cabin-agent")
	agentBytes, _ := os.ReadFile(agent)
	os.WriteFile(newAgent, append(agentBytes, "trailing bytes change the digest"...), 0o755)
	b2 := &Builder{Root: root, AgentBinary: newAgent, RuntimeBinary: runtime, Log: testLogger(t)}
	steps = nil
	img2, err := b2.Ensure(ctx, func(p Progress) { steps = append(steps, p.Step) })
	if err != nil {
		t.Fatal(err)
	}
	if !img2.Built || img2.Kernel != img.Kernel || img2.Initramfs == img.Initramfs || img2.AgentSHA256 == img.AgentSHA256 ||
		img2.Rootfs != img.Rootfs || img2.RuntimeSHA256 != img.RuntimeSHA256 {
		t.Errorf("after an agent change: %+v (was %+v)", img2, img)
	}
	for _, s := range steps {
		if strings.Contains(s, "linux-image") {
			t.Errorf("agent change downloaded the kernel again: %q", steps)
		}
	}
	// The previous image stays: another process may have just been given it.
	if _, err := os.Stat(img.Initramfs); err != nil {
		t.Errorf("previous initramfs pruned at once: %v", err)
	}
	// A new runtime: a new generation of the share, which holds it, and
	// a new initramfs named for it (the same bytes: links only).
	newRuntime := filepath.Join(t.TempDir(), "cabin-runtime")
	runtimeBytes, _ := os.ReadFile(runtime)
	os.WriteFile(newRuntime, append(runtimeBytes, "more trailing bytes"...), 0o755)
	b4 := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: newRuntime, Log: testLogger(t)}
	img4, err := b4.Ensure(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !img4.Built || img4.Kernel != img.Kernel || img4.Initramfs == img.Initramfs || img4.RuntimeSHA256 == img.RuntimeSHA256 ||
		img4.AgentSHA256 != img.AgentSHA256 || img4.Rootfs == img.Rootfs || img4.InitramfsBytes != img.InitramfsBytes {
		t.Errorf("after a runtime change: %+v (was %+v)", img4, img)
	}
	if got, err := os.ReadFile(filepath.Join(img4.Rootfs, bootcfg.SystemDir, "usr", "bin", "cabin-runtime")); err != nil || !bytes.HasSuffix(got, []byte("more trailing bytes")) {
		t.Errorf("the new generation does not hold the new runtime: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(img.Rootfs, bootcfg.SystemDir, "usr", "bin", "cabin-runtime")); err != nil || !bytes.Equal(got, runtimeBytes) {
		t.Errorf("the first generation's runtime changed under it: %v", err)
	}
	// Back to the first agent for the cache checks below.
	if _, err := b.Ensure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	m, err := b.readManifest()
	if err != nil {
		t.Fatal(err)
	}
	if state, err := b.packages().ListsState(); err != nil || m.AptState != state {
		t.Errorf("manifest apt state %q, want the lists' %q (%v)", m.AptState, state, err)
	}

	// The manifest of an image from an older busybox, written before apt
	// states were recorded: Ensure asks apt (for real), and moves to the
	// image of apt's busybox, which is cached.
	current := m.Userland
	m.AptState = ""
	m.Userland = slices.Clone(current)
	m.Userland[0].Version = "1:1.30.1-1"
	m.Key = cacheKey(digests{agent: m.AgentSHA256, runtime: m.RuntimeSHA256}, m.Kernel, m.Userland, m.BootModules, m.LateModules)
	if err := os.Link(img.Initramfs, root.Initramfs(m.Key)); err != nil {
		t.Fatal(err)
	}
	// Its generation of the root filesystems, standing in: a link to the
	// current one.
	m.RootfsDir = rootfsKey(m.Userland, m.RuntimeSHA256, m.Kernel, m.LateModules)
	if err := os.Symlink(filepath.Base(img.Rootfs), root.RootfsDir(m.RootfsDir)); err != nil {
		t.Fatal(err)
	}
	if err := b.writeManifest(m); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Ensure(ctx, nil); err != nil || got != withBuilt(img, false) {
		t.Errorf("Ensure behind apt's busybox: %+v, %v; want %+v", got, err, withBuilt(img, false))
	}
	if m, err := b.readManifest(); err != nil || m.AptState == "" || !slices.Equal(m.Userland, current) {
		t.Errorf("manifest after the update: %+v, %v", m, err)
	}

	// A new agent while apt offers a kernel the mirror cannot serve: the
	// image is built for the agent from the last image's packages.
	offline := &fakeApt{hostApt: hostApt{lists: aptListsDir}, cand: candidates{
		Kernel: pkgRef{"linux-image-9.9.9-1-amd64", "9.9.9-1"}, Userland: current,
	}}
	b3 := &Builder{Root: root, AgentBinary: newAgent, RuntimeBinary: runtime, Log: testLogger(t), apt: offline}
	if got, err := b3.Ensure(ctx, nil); err != nil || !got.Built || got.Kernel != img.Kernel || got.AgentSHA256 != img2.AgentSHA256 {
		t.Errorf("Ensure for a new agent, mirror down: %+v, %v; want an image of the cached kernel for the new agent", got, err)
	}
	if len(offline.downloads) != 1 || offline.downloads[0] != offline.cand.Kernel {
		t.Errorf("downloads %v, want one try of %s", offline.downloads, offline.cand.Kernel)
	}
	// Back to the first agent, with apt.
	if _, err := b.Ensure(ctx, nil); err != nil {
		t.Fatal(err)
	}

	checkKernelFile(t, b, img)

	// Cached: no apt at all (PATH has none of its tools), twice at once.
	t.Setenv("PATH", t.TempDir())
	var wg sync.WaitGroup
	results := make([]Image, 2)
	errs := make([]error, 2)
	start = time.Now()
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = b.Ensure(ctx, nil)
		}()
	}
	wg.Wait()
	t.Logf("cached Ensure (two at once): %v", time.Since(start).Round(time.Millisecond))
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("cached Ensure: %v", errs[i])
		}
		if results[i].Built {
			t.Error("cached Ensure reports Built=true")
		}
		if want := withBuilt(img, false); results[i] != want {
			t.Errorf("cached Ensure = %+v, want %+v", results[i], want)
		}
	}

	// Another process's Builder on the same state dir sees the same cache.
	other := &Builder{Root: root, AgentBinary: agent, RuntimeBinary: runtime, Log: testLogger(t)}
	if got, err := other.Ensure(ctx, nil); err != nil || got.Built || got.Initramfs != img.Initramfs {
		t.Errorf("second builder: %+v, %v", got, err)
	}
}

// checkDebianInitramfs checks the initramfs built from Debian's packages.
func checkDebianInitramfs(t *testing.T, img Image) {
	t.Helper()
	data, err := os.ReadFile(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readCPIO(data)
	if err != nil {
		t.Fatalf("initramfs does not parse: %v", err)
	}
	get := func(name string) (cpioEntry, bool) { return findEntry(entries, strings.TrimPrefix(name, "/")) }
	agent, _ := os.ReadFile(staticAgent(t))
	if e, ok := get(bootcfg.Init); !ok || e.typ() != cpioTypeReg || string(e.Data) != string(agent) {
		t.Errorf("/init is not the agent")
	}
	if e, ok := get(bootcfg.RuntimeBinary); !ok || e.typ() != cpioTypeLink || string(e.Data) != bootcfg.SystemPath(bootcfg.RuntimeBinary) {
		t.Errorf("%s is not a link into the share", bootcfg.RuntimeBinary)
	}
	// The guest's view once the share is mounted.
	sys := systemEntries(t, filepath.Join(img.Rootfs, bootcfg.SystemDir))
	view := append(slices.Clone(entries), sys...)
	runtime, _ := os.ReadFile(staticRuntime(t))
	if e, ok := resolveEntry(view, bootcfg.RuntimeBinary); !ok || e.typ() != cpioTypeReg || string(e.Data) != string(runtime) || e.Mode&0o777 != 0o755 {
		t.Errorf("%s does not reach the runtime, mode 0755, in the share", bootcfg.RuntimeBinary)
	}
	if e, ok := get(bootcfg.Busybox); !ok || e.typ() != cpioTypeReg || len(e.Data) < 500_000 {
		t.Errorf("busybox missing or too small")
	}
	if e, ok := get("/bin/sh"); !ok || e.typ() != cpioTypeLink || string(e.Data) != bootcfg.Busybox {
		t.Errorf("/bin/sh is not a link to busybox")
	}
	if e, ok := get("/dev/console"); !ok || e.typ() != cpioTypeChar || e.RMajor != 5 || e.RMinor != 1 {
		t.Errorf("/dev/console missing or wrong")
	}
	base := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, modName(strings.TrimSuffix(filepath.Base(p), ".ko")))
		}
		return out
	}
	lists := map[string][]string{}
	for _, l := range []string{bootcfg.BootModules, bootcfg.ShareModules, bootcfg.LateModules} {
		e, ok := get(l)
		if !ok {
			t.Fatalf("%s missing", l)
		}
		lists[l] = strings.Fields(string(e.Data))
		for _, p := range lists[l] {
			// Boot and 9p modules in the initramfs, the late ones in the
			// share.
			m, ok := get(bootcfg.ModulesDir + "/" + p)
			if l == bootcfg.LateModules {
				if ok {
					t.Errorf("late module %s is in the initramfs", p)
				}
				m, ok = resolveEntry(view, bootcfg.SystemModulesDir+"/"+p)
			}
			if !ok || !strings.HasPrefix(string(m.Data), "\x7fELF") {
				t.Errorf("%s lists %s, which is not an ELF file where the agent loads it", l, p)
			}
		}
	}
	t.Logf("boot modules: %q", lists[bootcfg.BootModules])
	t.Logf("share modules: %q", lists[bootcfg.ShareModules])
	t.Logf("late modules: %q", lists[bootcfg.LateModules])
	for _, m := range []string{"9p", "9pnet", "9pnet_virtio"} {
		if !slices.Contains(base(lists[bootcfg.ShareModules]), m) {
			t.Errorf("share list lacks %s", m)
		}
	}
	boot, late := base(lists[bootcfg.BootModules]), base(append(slices.Clone(lists[bootcfg.ShareModules]), lists[bootcfg.LateModules]...))
	before(t, boot, "virtio_ring", "virtio")
	before(t, boot, "virtio", "virtio_console")
	before(t, boot, "virtio_ring", "virtio_console")
	before(t, boot, "virtio", "virtio_mmio")
	for _, m := range []string{"virtio_blk", "virtio_net", "virtio_rng", "virtio_balloon", "ext4", "overlay", "loop", "9p", "9pnet_virtio", "vsock", "vmw_vsock_virtio_transport"} {
		if !slices.Contains(late, m) {
			t.Errorf("late list lacks %s", m)
		}
	}
	for _, m := range boot {
		if slices.Contains(late, m) {
			t.Errorf("late list repeats boot module %s", m)
		}
	}
	// ext4's softdep on crc32c is met by every provider the kernel has.
	before(t, late, "crc32c_generic", "ext4")
	// iptables' modules, after what the VM needs sooner.
	for _, m := range []string{"x_tables", "ip_tables", "iptable_filter", "iptable_nat", "ip6table_filter", "nf_conntrack", "xt_tcpudp", "xt_conntrack"} {
		if !slices.Contains(late, m) {
			t.Errorf("late list lacks %s", m)
		}
	}
	before(t, late, "vsock", "x_tables")
	before(t, late, "x_tables", "ip_tables")
	// iptables and what the loader loads for it (programs_test.go runs
	// them).
	for name, link := range map[string]string{
		"/usr/sbin/xtables-legacy-multi":                 "",
		"/usr/sbin/iptables-save":                        "/usr/sbin/xtables-legacy-multi",
		"/usr/sbin/ip6tables-restore":                    "/usr/sbin/xtables-legacy-multi",
		"/lib/x86_64-linux-gnu/libc.so.6":                "",
		"/lib64/ld-linux-x86-64.so.2":                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/usr/lib/x86_64-linux-gnu/libxtables.so.12":     "",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_tcp.so": "",
		// e2fsprogs', for the stateful disk.
		"/sbin/mke2fs":                            "",
		"/sbin/mkfs.ext4":                         "/sbin/mke2fs",
		"/sbin/e2fsck":                            "",
		"/sbin/resize2fs":                         "",
		"/lib/x86_64-linux-gnu/libext2fs.so.2":    "",
		"/usr/lib/x86_64-linux-gnu/libblkid.so.1": "",
	} {
		e, ok := get(name)
		if link == "" {
			// A link into the share, where the ELF file is.
			link = bootcfg.SystemPath(name)
		}
		switch {
		case !ok:
			t.Errorf("%s missing", name)
		case e.typ() != cpioTypeLink || string(e.Data) != link:
			t.Errorf("%s is not a link to %s", name, link)
		}
		if e, ok := resolveEntry(view, name); !ok || e.typ() != cpioTypeReg || !strings.HasPrefix(string(e.Data), "\x7fELF") {
			t.Errorf("%s does not reach an ELF file", name)
		}
	}
	var size int
	for _, e := range entries {
		size += len(e.Data)
		if e.typ() == cpioTypeReg && strings.HasPrefix(e.Name, "usr/share/zoneinfo/") {
			t.Errorf("%s is in the initramfs", e.Name)
		}
	}
	t.Logf("initramfs: %d bytes of file data in %d entries", size, len(entries))
	checkDebianZoneinfo(t, view)
}

// checkDebianZoneinfo checks tzdata's part of the image, entries being
// the guest's view with the share mounted.
func checkDebianZoneinfo(t *testing.T, entries []cpioEntry) {
	t.Helper()
	tree := strings.TrimPrefix(bootcfg.SystemRoot, "/") + "/usr/share/zoneinfo/"
	if e, ok := findEntry(entries, "etc/localtime"); !ok || e.typ() != cpioTypeLink || string(e.Data) != "/usr/share/zoneinfo/UTC" {
		t.Errorf("/etc/localtime is not a link to /usr/share/zoneinfo/UTC")
	}
	for _, name := range []string{"/etc/localtime", "/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Etc/UTC", "/usr/share/zoneinfo/Europe/Paris", "/usr/share/zoneinfo/America/New_York"} {
		e, ok := resolveEntry(entries, name)
		if !ok || e.typ() != cpioTypeReg || !strings.HasPrefix(e.Name, tree) || !strings.HasPrefix(string(e.Data), "TZif") {
			t.Errorf("%s does not resolve to a zone file in the tree (reached %q, found %v)", name, e.Name, ok)
		}
	}
	var files, links, bytes int
	for _, e := range entries {
		rel, ok := strings.CutPrefix(e.Name, tree)
		if !ok {
			continue
		}
		if rel == "right" || strings.HasPrefix(rel, "right/") || rel == "localtime" {
			t.Errorf("%s is in the initramfs", e.Name)
		}
		switch e.typ() {
		case cpioTypeReg:
			files++
			bytes += len(e.Data)
			if strings.HasPrefix(rel, "posix/") {
				t.Errorf("%s: posix/ holds a copy, not a link", e.Name)
			}
		case cpioTypeLink:
			links++
			// Every link lands on a file or directory of the tree.
			if to, ok := resolveEntry(entries, e.Name); !ok || !strings.HasPrefix(to.Name, tree) {
				t.Errorf("%s -> %s does not resolve inside the tree (reached %q)", e.Name, e.Data, to.Name)
			}
		case cpioTypeDir:
		default:
			t.Errorf("%s: mode %o, neither a file, a link nor a directory", e.Name, e.Mode)
		}
	}
	t.Logf("zoneinfo: %d files (%d bytes), %d links", files, bytes, links)
	if files < 300 || links < 50 {
		t.Errorf("zoneinfo has %d files and %d links: too few for tzdata", files, links)
	}
}

func withBuilt(img Image, built bool) Image {
	img.Built = built
	return img
}
