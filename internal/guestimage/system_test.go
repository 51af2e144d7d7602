package guestimage

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// testInputs are inputs as unpackInputs would read them, from fake files:
// a boot set, the 9p set and a late module, a program with a library, its
// loader (a link, as Debian's) and a link to it, and a zoneinfo tree.
func testInputs(t *testing.T) *inputs {
	t.Helper()
	dir := t.TempDir()
	put := func(rel, data string, mode fs.FileMode) string {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	in := &inputs{
		work:       dir,
		agent:      put("agent", "AGENT", 0o700),
		agentSHA:   sha256Hex("AGENT"),
		runtime:    put("runtime", "RUNTIME", 0o700),
		runtimeSHA: sha256Hex("RUNTIME"),
		busybox:    put("busybox", "BUSYBOX", 0o700),
		// busybox lists "init" and itself among its applets: neither may
		// replace a real file.
		applets: []string{"sh", "init", "busybox", "[", "ls"},
		modRoot: filepath.Join(dir, "modules"),
		boot:    []string{"kernel/virtio_mmio.ko"},
		share:   []string{"kernel/net/9p/9pnet.ko", "kernel/fs/9p/9p.ko"},
		late:    []string{"kernel/fs/ext4/ext4.ko"},
		programs: []guestFile{
			{Name: "/usr/sbin/xtables-legacy-multi", Src: put("pkg/xtables", "XTABLES", 0o644), Mode: 0o755},
			{Name: "/usr/sbin/iptables", Target: "/usr/sbin/xtables-legacy-multi"},
			{Name: "/lib/x86_64-linux-gnu/libc.so.6", Src: put("pkg/libc", "LIBC", 0o644), Mode: 0o755},
			{Name: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Src: put("pkg/ld", "LOADER", 0o644), Mode: 0o755},
			{Name: "/lib64/ld-linux-x86-64.so.2", Target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		},
	}
	for _, m := range slices.Concat(in.boot, in.share, in.late) {
		put("modules/"+m, "module "+m, 0o644)
	}
	in.zoneRoot = zoneTree(t, debianLikeZones())
	var err error
	if in.zones, err = zoneinfoEntries(in.zoneRoot); err != nil {
		t.Fatal(err)
	}
	return in
}

// systemEntries are the files of a SystemDir tree at dir as the guest
// sees them once the share is mounted: entries below bootcfg.SystemRoot.
func systemEntries(t *testing.T, dir string) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := strings.TrimPrefix(path.Join(bootcfg.SystemRoot, filepath.ToSlash(rel)), "/")
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := cpioEntry{Name: name, Mode: uint32(st.Mode().Perm())}
		switch {
		case st.IsDir():
			e.Mode |= cpioTypeDir
		case st.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Mode |= cpioTypeLink
			e.Data = []byte(target)
		default:
			e.Mode |= cpioTypeReg
			if e.Data, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The directories above, as the guest's mounts make them.
	for p := path.Dir(strings.TrimPrefix(bootcfg.SystemRoot, "/")); p != "."; p = path.Dir(p) {
		out = append(out, cpioEntry{Name: p, Mode: cpioTypeDir | 0o755})
	}
	return out
}

// TestWhatGoesWhere: the initramfs holds what boot needs, the share's
// SystemDir the rest, and every moved file's usual path in the guest
// resolves, once the share is mounted, to the file.
func TestWhatGoesWhere(t *testing.T) {
	in := testInputs(t)
	dir := t.TempDir()
	dst := filepath.Join(dir, "initramfs.cpio")
	size, err := writeInitramfs(dst, in)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) != size {
		t.Errorf("size %d, file %d", size, len(data))
	}
	if err := CheckInitramfs(dst); err != nil {
		t.Errorf("CheckInitramfs: %v", err)
	}
	entries, err := readCPIO(data)
	if err != nil {
		t.Fatal(err)
	}
	sys := filepath.Join(dir, "gen", bootcfg.SystemDir)
	if err := os.MkdirAll(filepath.Dir(sys), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeSystem(sys, in); err != nil {
		t.Fatal(err)
	}
	get := func(name string) cpioEntry {
		t.Helper()
		e, ok := findEntry(entries, strings.TrimPrefix(name, "/"))
		if !ok {
			t.Fatalf("%s missing from the initramfs", name)
		}
		return e
	}

	// In the initramfs: the agent, busybox, the boot and 9p modules and
	// the lists; only links for the rest.
	if e := get(bootcfg.Init); e.typ() != cpioTypeReg || string(e.Data) != "AGENT" || e.Mode&0o777 != 0o755 {
		t.Errorf("/init: mode %o data %q; want the agent, 0755", e.Mode, e.Data)
	}
	if e := get(bootcfg.Busybox); e.typ() != cpioTypeReg || string(e.Data) != "BUSYBOX" {
		t.Errorf("busybox: mode %o data %q", e.Mode, e.Data)
	}
	for _, a := range []string{"sh", "[", "ls", "init"} {
		if e := get(bootcfg.BusyboxBinDir + "/" + a); e.typ() != cpioTypeLink || string(e.Data) != bootcfg.Busybox {
			t.Errorf("applet %s: mode %o target %q", a, e.Mode, e.Data)
		}
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/root", "/mnt", bootcfg.ModulesDir} {
		if e := get(d); e.typ() != cpioTypeDir {
			t.Errorf("%s: mode %o, want a directory", d, e.Mode)
		}
	}
	if e := get("/tmp"); e.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp mode %o, want sticky 1777", e.Mode)
	}
	if e := get("/dev/console"); e.typ() != cpioTypeChar || e.RMajor != 5 || e.RMinor != 1 {
		t.Errorf("/dev/console: mode %o rdev %d:%d", e.Mode, e.RMajor, e.RMinor)
	}
	for _, m := range slices.Concat(in.boot, in.share) {
		if e := get(bootcfg.ModulesDir + "/" + m); e.typ() != cpioTypeReg || string(e.Data) != "module "+m {
			t.Errorf("%s: data %q", m, e.Data)
		}
	}
	for list, want := range map[string]string{
		bootcfg.BootModules:  "kernel/virtio_mmio.ko\n",
		bootcfg.ShareModules: "kernel/net/9p/9pnet.ko\nkernel/fs/9p/9p.ko\n",
		bootcfg.LateModules:  "kernel/fs/ext4/ext4.ko\n",
	} {
		if got := string(get(list).Data); got != want {
			t.Errorf("%s: %q, want %q", list, got, want)
		}
	}
	for _, e := range entries {
		if e.typ() != cpioTypeReg {
			continue
		}
		for _, moved := range []string{"RUNTIME", "XTABLES", "LIBC", "LOADER", "TZif", "module kernel/fs/ext4"} {
			if strings.HasPrefix(string(e.Data), moved) {
				t.Errorf("%s (%.20q) is in the initramfs; it belongs in the share", e.Name, e.Data)
			}
		}
	}
	for name, target := range map[string]string{
		bootcfg.RuntimeBinary:                        bootcfg.SystemRoot + bootcfg.RuntimeBinary,
		"/usr/sbin/xtables-legacy-multi":             bootcfg.SystemRoot + "/usr/sbin/xtables-legacy-multi",
		"/usr/sbin/iptables":                         "/usr/sbin/xtables-legacy-multi",
		"/lib64/ld-linux-x86-64.so.2":                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		bootcfg.Zoneinfo:                             bootcfg.SystemRoot + bootcfg.Zoneinfo,
		bootcfg.Localtime:                            bootcfg.Zoneinfo + "/UTC",
		"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": bootcfg.SystemRoot + "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
	} {
		if e := get(name); e.typ() != cpioTypeLink || string(e.Data) != target {
			t.Errorf("%s: mode %o target %q, want a link to %s", name, e.Mode, e.Data, target)
		}
	}

	// In the share: the runtime (0755), the programs' files with their
	// modes, zoneinfo, the late modules; no boot or 9p module.
	for rel, want := range map[string]struct {
		data string
		mode fs.FileMode
	}{
		"usr/bin/cabin-runtime":                     {"RUNTIME", 0o755},
		"usr/sbin/xtables-legacy-multi":             {"XTABLES", 0o755},
		"lib/x86_64-linux-gnu/libc.so.6":            {"LIBC", 0o755},
		"lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": {"LOADER", 0o755},
		"lib/modules/kernel/fs/ext4/ext4.ko":        {"module kernel/fs/ext4/ext4.ko", 0o644},
	} {
		p := filepath.Join(sys, filepath.FromSlash(rel))
		st, err := os.Lstat(p)
		got, _ := os.ReadFile(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != want.mode || string(got) != want.data {
			t.Errorf("share %s: %v %v %q; want %q mode %o", rel, err, st.Mode(), got, want.data, want.mode)
		}
	}
	for _, m := range slices.Concat(in.boot, in.share) {
		if _, err := os.Lstat(filepath.Join(sys, "lib", "modules", filepath.FromSlash(m))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is in the share: %v", m, err)
		}
	}

	// The guest's view once mounted: each usual path reaches the file.
	view := append(slices.Clone(entries), systemEntries(t, sys)...)
	for name, want := range map[string]string{
		bootcfg.RuntimeBinary:                                "RUNTIME",
		"/usr/sbin/iptables":                                 "XTABLES",
		"/lib64/ld-linux-x86-64.so.2":                        "LOADER",
		"/lib/x86_64-linux-gnu/libc.so.6":                    "LIBC",
		"/etc/localtime":                                     "TZif",
		"/usr/share/zoneinfo/Europe/Paris":                   "TZif",
		"/usr/share/zoneinfo/posix/Europe/Paris":             "TZif",
		bootcfg.SystemModulesDir + "/kernel/fs/ext4/ext4.ko": "module kernel/fs/ext4/ext4.ko",
	} {
		e, ok := resolveEntry(view, name)
		if !ok || e.typ() != cpioTypeReg || !strings.HasPrefix(string(e.Data), want) {
			t.Errorf("%s resolves to %q (found %v), want a file starting %q", name, e.Name, ok, want)
		}
	}
	// Before it is mounted, the links lead nowhere: callers wait for
	// the share rather than find nothing.
	if _, ok := resolveEntry(entries, bootcfg.RuntimeBinary); ok {
		t.Errorf("%s resolves without the share", bootcfg.RuntimeBinary)
	}
	for _, e := range view {
		if strings.Contains(e.Name, "zoneinfo/right") || strings.HasSuffix(e.Name, "zoneinfo/localtime") {
			t.Errorf("%s is in the image", e.Name)
		}
	}

	// Same inputs, same bytes.
	dst2 := filepath.Join(dir, "again.cpio")
	if _, err := writeInitramfs(dst2, in); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(dst2); !bytes.Equal(again, data) {
		t.Error("rebuilding the same inputs changed the bytes")
	}
}

// TestBadInputsBuildNothing: a binary changed during the build, or a path
// that would leave its tree, fails the initramfs or the share and leaves
// nothing behind.
func TestBadInputsBuildNothing(t *testing.T) {
	for name, c := range map[string]struct {
		bad   func(*inputs)
		share bool // the share fails, else the initramfs
	}{
		"agent changed during the build":       {func(in *inputs) { in.agentSHA = sha256Hex("AGENT A") }, false},
		"boot module escaping the modules dir": {func(in *inputs) { in.boot = []string{"../../etc/shadow.ko"} }, false},
		"late list entry escaping":             {func(in *inputs) { in.late = []string{"../x.ko"} }, false},
		"no runtime":                           {func(in *inputs) { in.runtime = "" }, true},
		"runtime changed during the build":     {func(in *inputs) { in.runtimeSHA = sha256Hex("RUNTIME A") }, true},
		"late module escaping the modules dir": {func(in *inputs) { in.late = []string{"../../etc/shadow.ko"} }, true},
		"zone path escaping the tree":          {func(in *inputs) { in.zones = []zoneEntry{{Rel: "../../etc/shadow"}} }, true},
		"zone link leaving the tree":           {func(in *inputs) { in.zones = []zoneEntry{{Rel: "UTC", Target: "/etc/shadow"}} }, true},
		"program path not clean":               {func(in *inputs) { in.programs[0].Name = "/usr/../../etc/x" }, true},
	} {
		t.Run(name, func(t *testing.T) {
			in := testInputs(t)
			c.bad(in)
			dir := t.TempDir()
			if c.share {
				err := writeSystem(filepath.Join(dir, "system"), in)
				if err == nil {
					t.Fatal("writeSystem accepted it")
				}
				return
			}
			dst := filepath.Join(dir, "bad.cpio")
			if _, err := writeInitramfs(dst, in); err == nil {
				t.Fatal("writeInitramfs accepted it")
			}
			if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a failed build left an initramfs behind: %v", err)
			}
		})
	}
}

// TestSplitLate: the 9p set and what it needs stay with the initramfs, in
// load order; the rest of the late set goes to the share.
func TestSplitLate(t *testing.T) {
	root := t.TempDir()
	mods := map[string][]string{
		"kernel/drivers/virtio/virtio_ring.ko": {"depends=", "name=virtio_ring"},
		"kernel/drivers/virtio/virtio.ko":      {"depends=virtio_ring", "name=virtio"},
		"kernel/fs/netfs/netfs.ko":             {"depends=", "name=netfs"},
		"kernel/net/9p/9pnet.ko":               {"depends=", "name=9pnet"},
		"kernel/net/9p/9pnet_virtio.ko":        {"depends=9pnet,virtio,virtio_ring", "name=9pnet_virtio"},
		"kernel/fs/9p/9p.ko":                   {"depends=9pnet,netfs", "name=9p"},
		"kernel/fs/ext4/ext4.ko":               {"depends=", "name=ext4"},
		"kernel/drivers/block/loop.ko":         {"depends=", "name=loop"},
	}
	for rel, info := range mods {
		p := filepath.Join(root, filepath.FromSlash(rel))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, testKO(info...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	boot := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko"}
	late := []string{"kernel/fs/ext4/ext4.ko", "kernel/fs/netfs/netfs.ko", "kernel/net/9p/9pnet.ko",
		"kernel/fs/9p/9p.ko", "kernel/net/9p/9pnet_virtio.ko", "kernel/drivers/block/loop.ko"}
	share, rest, err := splitLate(context.Background(), root, boot, late)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"kernel/fs/netfs/netfs.ko", "kernel/net/9p/9pnet.ko", "kernel/fs/9p/9p.ko", "kernel/net/9p/9pnet_virtio.ko"}; !slices.Equal(share, want) {
		t.Errorf("share set %q, want %q", share, want)
	}
	if want := []string{"kernel/fs/ext4/ext4.ko", "kernel/drivers/block/loop.ko"}; !slices.Equal(rest, want) {
		t.Errorf("late set %q, want %q", rest, want)
	}

	// A kernel with no modules (cabin's own) has nothing to split.
	if share, rest, err := splitLate(context.Background(), filepath.Join(root, "none"), nil, nil); err != nil || share != nil || rest != nil {
		t.Errorf("no modules: %q %q %v", share, rest, err)
	}
	// One without 9p modules: nothing stays, the share is reported
	// unmountable in the guest.
	share, rest, err = splitLate(context.Background(), root, boot, []string{"kernel/fs/ext4/ext4.ko"})
	if err == nil {
		t.Errorf("a 9p module outside the late set: %q %q, want an error", share, rest)
	}
}

// TestRootfsKeyCoversTheShare: everything the generation holds names it,
// so a changed cabin-runtime, package or kernel is a new generation.
func TestRootfsKeyCoversTheShare(t *testing.T) {
	u := testUserland()
	k := pkgRef{"linux-image-6.1.0-56-amd64", "6.1.192-2"}
	late := []string{"kernel/fs/ext4/ext4.ko"}
	base := rootfsKey(u, sha256Hex("RUNTIME"), k, late)
	if !isHexDigest(base) || base != rootfsKey(slices.Clone(u), sha256Hex("RUNTIME"), k, slices.Clone(late)) {
		t.Fatalf("rootfsKey not a stable digest: %q", base)
	}
	newer := slices.Clone(u)
	newer[len(newer)-1].Version += "+1"
	for name, key := range map[string]string{
		"runtime": rootfsKey(u, sha256Hex("RUNTIME 2"), k, late),
		"kernel":  rootfsKey(u, sha256Hex("RUNTIME"), pkgRef{k.Name, "6.1.192-3"}, late),
		"late":    rootfsKey(u, sha256Hex("RUNTIME"), k, append(slices.Clone(late), "kernel/loop.ko")),
		"package": rootfsKey(newer, sha256Hex("RUNTIME"), k, late),
	} {
		if key == base {
			t.Errorf("a new %s keeps the generation's name", name)
		}
	}
}
