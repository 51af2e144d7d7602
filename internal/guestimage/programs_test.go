package guestimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testUserland is a full set of userland packages, the programs' at a
// made-up version.
func testUserland() []pkgRef {
	u := []pkgRef{{busyboxPackage, "1:1.35.0-4+deb12u1+b1"}, {tzdataPackage, "2026f-0+deb12u1"}}
	for _, p := range programPackages {
		u = append(u, pkgRef{p, "1.0-1"})
	}
	return u
}

var (
	programDebsOnce sync.Once
	programDebsDir  string
	programDebsErr  error
)

// programDebs downloads programPackages (apt's candidates, a few MB) once
// per test binary and unpacks each into a directory named after it, as
// the initramfs build does; it skips where there is no apt.
func programDebs(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("downloads Debian's iptables, e2fsprogs and libc6 packages; skipped in -short mode")
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: this test needs a Debian host with apt", tool)
		}
	}
	programDebsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cabin-program-debs")
		if err != nil {
			programDebsErr = err
			return
		}
		testTempDirs = append(testTempDirs, dir)
		debs := filepath.Join(dir, "debs")
		os.Mkdir(debs, 0o755)
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, programPackages...)...)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			programDebsErr = err
			programDebsDir = string(out)
			return
		}
		for _, p := range programPackages {
			found, _ := filepath.Glob(filepath.Join(debs, p+"_*.deb"))
			if len(found) != 1 {
				programDebsErr = os.ErrNotExist
				return
			}
			if err := debExtract(context.Background(), found[0], filepath.Join(dir, p)); err != nil {
				programDebsErr = err
				return
			}
		}
		programDebsDir = dir
	})
	if programDebsErr != nil {
		t.Skipf("cannot get %v from apt: %v %s", programPackages, programDebsErr, programDebsDir)
	}
	return programDebsDir
}

// TestProgramFiles resolves iptables' files from Debian's packages, lays
// them out as the initramfs would, and runs them there: chrooted in a
// network namespace of their own, iptables-restore and iptables-save
// find their loader, libraries and extensions with nothing of the
// host's.
func TestProgramFiles(t *testing.T) {
	work := programDebs(t)
	files, err := programFiles(work, programPackages, iptables)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]guestFile{}
	var size int64
	for _, f := range files {
		if _, dup := byName[f.Name]; dup {
			t.Errorf("%s twice", f.Name)
		}
		byName[f.Name] = f
		if f.Src != "" {
			st, err := os.Stat(f.Src)
			if err != nil {
				t.Fatal(err)
			}
			size += st.Size()
		}
	}
	t.Logf("%d files, %d KiB", len(files), size>>10)
	for name, want := range map[string]string{
		"/usr/sbin/xtables-legacy-multi":                      "",
		"/usr/sbin/iptables-restore":                          "/usr/sbin/xtables-legacy-multi",
		"/usr/sbin/ip6tables-save":                            "/usr/sbin/xtables-legacy-multi",
		"/lib64/ld-linux-x86-64.so.2":                         "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2":          "",
		"/lib/x86_64-linux-gnu/libc.so.6":                     "",
		"/usr/lib/x86_64-linux-gnu/libxtables.so.12":          "",
		"/usr/lib/x86_64-linux-gnu/libip4tc.so.2":             "",
		"/usr/lib/x86_64-linux-gnu/libip6tc.so.2":             "",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_tcp.so":      "",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_SNAT.so":     "libxt_NAT.so",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_state.so":    "libxt_conntrack.so",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_NAT.so":      "",
		"/usr/lib/x86_64-linux-gnu/xtables/libipt_icmp.so":    "",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_standard.so": "",
	} {
		f, ok := byName[name]
		if !ok || f.Target != want || (want == "" && f.Src == "") {
			t.Errorf("%s: %+v, want a link to %q (a file if empty)", name, f, want)
		}
	}
	// Nothing of the nf_tables backend's.
	for name := range byName {
		if strings.Contains(name, "nftnl") || strings.Contains(name, "libmnl") {
			t.Errorf("%s: the legacy backend needs no such library", name)
		}
	}

	if os.Geteuid() != 0 {
		t.Skip("running the programs needs root (chroot, a network namespace)")
	}
	root := t.TempDir()
	for _, f := range files {
		dst := filepath.Join(root, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.Target != "" {
			err = os.Symlink(f.Target, dst)
		} else {
			var data []byte
			if data, err = os.ReadFile(f.Src); err == nil {
				err = os.WriteFile(dst, data, f.Mode)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// The guest has /run, where iptables takes its lock.
	os.Mkdir(filepath.Join(root, "run"), 0o755)
	rules := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
		"-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment ssh -j ACCEPT\n" +
		"-A INPUT -p icmp -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n" +
		"*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" +
		"-A POSTROUTING -o eth0 -j MASQUERADE\n-A PREROUTING -p tcp -m multiport --dports 80,443 -j DNAT --to-destination 10.0.0.2\nCOMMIT\n"
	run := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command("unshare", append([]string{"-n", "chroot", root}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Env = []string{"PATH=/usr/sbin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return string(out)
	}
	// --test parses every rule, and so loads every extension it names
	// with its libraries, without the kernel's tables (which would need
	// the host's modules).
	run(rules, "/usr/sbin/iptables-restore", "--test")
	run("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p ipv6-icmp -j ACCEPT\nCOMMIT\n", "/usr/sbin/ip6tables-restore", "--test")
	cmd := exec.Command("unshare", "-n", "chroot", root, "/usr/sbin/iptables-restore", "--test")
	cmd.Stdin = strings.NewReader("*filter\n-A INPUT -m nosuchmatch -j ACCEPT\nCOMMIT\n")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("an unknown match was taken: %s", out)
	}
	t.Logf("iptables-save in a new namespace: %q", run("", "/usr/sbin/iptables-save"))
}

// A library none of the packages has is an error naming it.
func TestProgramFilesMissingLibrary(t *testing.T) {
	work := programDebs(t)
	var without []string
	for _, p := range programPackages {
		if p != "libxtables12" {
			without = append(without, p)
		}
	}
	_, err := programFiles(work, without, iptables)
	if err == nil || !strings.Contains(err.Error(), "needs libxtables.so.12") {
		t.Errorf("without libxtables12: %v", err)
	}
	bad := iptables
	bad.Plugins = append(bad.Plugins, "libxt_nosuch.so")
	if _, err := programFiles(work, programPackages, bad); err == nil || !strings.Contains(err.Error(), "libxt_nosuch.so") {
		t.Errorf("a missing plugin: %v", err)
	}
}

// TestE2fsprogsFiles resolves e2fsprogs' three programs with iptables, as
// the image has them, lays them out as the initramfs would, and runs
// them chrooted there on an image file: mkfs.ext4 makes a filesystem,
// e2fsck finds it clean, resize2fs estimates its minimum and grows it,
// all with nothing of the host's.
func TestE2fsprogsFiles(t *testing.T) {
	work := programDebs(t)
	files, err := programFiles(work, programPackages, programs...)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]guestFile{}
	for _, f := range files {
		if _, dup := byName[f.Name]; dup {
			t.Errorf("%s twice", f.Name)
		}
		byName[f.Name] = f
	}
	// What e2fsprogs adds to the image: its programs and libraries, libc
	// and the loader being iptables' already.
	own, err := programFiles(work, programPackages, mke2fs, e2fsck, resize2fs)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, f := range own {
		if f.Src == "" || strings.Contains(f.Name, "libc.so") || strings.Contains(f.Name, "ld-linux") {
			continue
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			t.Fatal(err)
		}
		size += st.Size()
	}
	t.Logf("%d files in all; e2fsprogs' programs and libraries: %d KiB", len(files), size>>10)
	for name, want := range map[string]string{
		"/sbin/mke2fs":                               "",
		"/sbin/mkfs.ext4":                            "/sbin/mke2fs",
		"/sbin/e2fsck":                               "",
		"/sbin/fsck.ext4":                            "/sbin/e2fsck",
		"/sbin/resize2fs":                            "",
		"/lib/x86_64-linux-gnu/libext2fs.so.2":       "",
		"/lib/x86_64-linux-gnu/libe2p.so.2":          "",
		"/lib/x86_64-linux-gnu/libcom_err.so.2":      "",
		"/usr/lib/x86_64-linux-gnu/libblkid.so.1":    "",
		"/usr/lib/x86_64-linux-gnu/libuuid.so.1":     "",
		"/lib/x86_64-linux-gnu/libc.so.6":            "",
		"/usr/sbin/xtables-legacy-multi":             "",
		"/lib64/ld-linux-x86-64.so.2":                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "",
	} {
		f, ok := byName[name]
		if !ok || f.Target != want || (want == "" && f.Src == "") {
			t.Errorf("%s: %+v, want a link to %q (a file if empty)", name, f, want)
		}
	}

	if os.Geteuid() != 0 {
		t.Skip("running the programs needs root (chroot)")
	}
	root := t.TempDir()
	for _, f := range files {
		dst := filepath.Join(root, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.Target != "" {
			err = os.Symlink(f.Target, dst)
		} else {
			var data []byte
			if data, err = os.ReadFile(f.Src); err == nil {
				err = os.WriteFile(dst, data, f.Mode)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(root, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	// e2fsprogs finds what is mounted in /proc/mounts, which the guest
	// has: a /proc of its own for the chroot.
	os.Mkdir(filepath.Join(root, "proc"), 0o555)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("unshare", append([]string{"--mount", "--pid", "--fork", "--mount-proc=" + filepath.Join(root, "proc"), "chroot", root}, args...)...)
		cmd.Env = []string{"PATH=/sbin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return string(out)
	}
	run("mkfs.ext4", "-q", "-F", "-T", "default", "-m", "0", "/disk.img")
	run("fsck.ext4", "-f", "-n", "/disk.img")
	if out := run("resize2fs", "-P", "/disk.img"); !strings.Contains(out, "Estimated minimum size of the filesystem:") {
		t.Errorf("resize2fs -P: %s", out)
	}
	if err := os.Truncate(img, 96<<20); err != nil {
		t.Fatal(err)
	}
	run("resize2fs", "/disk.img")
	// What the host's own e2fsprogs makes of the result.
	if dumpe2fs, err := exec.LookPath("dumpe2fs"); err == nil {
		out, err := exec.Command(dumpe2fs, "-h", img).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Block count:              24576") || !strings.Contains(string(out), "Filesystem features:      has_journal") {
			t.Errorf("dumpe2fs of the chroot's filesystem: %v\n%s", err, out)
		}
	}
}
