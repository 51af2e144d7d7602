package guestimage

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The container root filesystems live beside the initramfs, one
// generation per directory (statedir RootfsDir), named by the digest of
// what went into it (rootfsKey). Every VM gets its generation as a
// read-only 9p share, which QEMU opens once at launch and serves for the
// VM's life, so a generation is never changed once it is in place: it is
// written in a work directory and renamed into place whole, and a newer
// one gets a new name. prune removes a generation only when neither the
// current nor the previous manifest names it and no VM that may still run
// was given it (Builder.InUse).

// rootfsFormat versions what this code puts in a generation. Bumping it
// builds a new generation (under a new key) the next time the image is
// ensured, and leaves the old one to running VMs until they stop.
//
// 2: the SystemDir tree (system.go) beside the busybox tree.
const rootfsFormat = 2

// rootfsKey names the generation built from these packages (busybox's
// tree; the programs, their libraries and zoneinfo in SystemDir), this
// cabin-runtime (its digest) and this kernel's late modules.
func rootfsKey(userland []pkgRef, runtimeSHA string, kernel pkgRef, late []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "cabin rootfs\nformat %d\nruntime %s\nkernel %s %s\nlate %s\n",
		rootfsFormat, runtimeSHA, kernel.Name, kernel.Version, strings.Join(late, ","))
	for _, p := range userland {
		fmt.Fprintf(h, "package %s %s\n", p.Name, p.Version)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// rootfsDirs are the busybox tree's directories besides bin and etc.
// The share is read-only and a container runtime mounts over these (a
// tmpfs on /dev and /tmp, proc, sysfs, ...) without being able to create
// them, so each must be there. Modes are the usual ones, for what a
// process in the container sees before anything is mounted.
var rootfsDirs = []struct {
	name string
	perm fs.FileMode
}{
	{"bin", 0o755},
	{"dev", 0o755},
	{"etc", 0o755},
	{"proc", 0o555},
	{"root", 0o700},
	{"run", 0o755},
	{"sys", 0o555},
	{"tmp", 0o777 | fs.ModeSticky},
}

// The accounts of the busybox tree: root, and nobody for processes run
// without privileges, with Debian's ids and names.
const (
	rootfsPasswd = "root:x:0:0:root:/root:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	rootfsGroup = "root:x:0:\n" +
		"nogroup:x:65534:\n"
)

// rootfsComplete reports whether dir holds a generation: the directory is
// renamed into place only once complete, so this only guards against one
// damaged from outside.
func rootfsComplete(dir string) bool {
	tree := filepath.Join(dir, bootcfg.RootfsBusybox)
	for _, p := range []string{filepath.Join(tree, "bin", "busybox"), filepath.Join(tree, "etc", "passwd")} {
		if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return systemComplete(dir)
}

// ensureRootfs makes the generation name exist, built from in, and
// reports whether it was built now.
func (b *Builder) ensureRootfs(name string, in *inputs, rep *reporter) (bool, error) {
	if !isHexDigest(name) {
		return false, fmt.Errorf("container root filesystems: %q is not a generation name", name)
	}
	dir := b.Root.RootfsDir(name)
	if rootfsComplete(dir) {
		return false, nil
	}
	rep.Step("building the container root filesystems and the system share")
	work, err := os.MkdirTemp(b.rootfsDir(), buildPrefix)
	if err != nil {
		return false, fmt.Errorf("container root filesystems: %w", err)
	}
	defer os.RemoveAll(work)
	gen := filepath.Join(work, "gen")
	if err := writeRootfs(gen, in.busybox, in.applets); err != nil {
		return false, fmt.Errorf("container root filesystems: %w", err)
	}
	if err := writeSystem(filepath.Join(gen, bootcfg.SystemDir), in); err != nil {
		return false, fmt.Errorf("guest system share: %w", err)
	}
	// The generation counts as complete once renamed into place, so its
	// files must be on disk before the rename is: after a crash, a
	// generation with an empty busybox would be served as it is.
	if err := syncFS(gen); err != nil {
		return false, fmt.Errorf("container root filesystems: %w", err)
	}
	if _, err := os.Lstat(dir); err == nil {
		// Damaged from outside (rootfsComplete said no): whatever uses
		// it is broken already, and a new one cannot take its name
		// while it is there.
		b.log().Warn("container root filesystems damaged; replacing them", "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			return false, fmt.Errorf("container root filesystems: %w", err)
		}
	}
	if err := os.Rename(gen, dir); err != nil {
		return false, fmt.Errorf("container root filesystems: %w", err)
	}
	b.log().Info("container root filesystems and system share built", "dir", dir, "applets", len(in.applets),
		"late_modules", len(in.late))
	return true, nil
}

// writeRootfs writes a generation into dir, which must not exist: the
// busybox tree (bootcfg.RootfsBusybox) with the static busybox binary,
// its applets as relative links beside it (so the tree works wherever
// it is mounted), the accounts, and the directories a container runtime
// mounts on.
func writeRootfs(dir, busybox string, applets []string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	tree := filepath.Join(dir, bootcfg.RootfsBusybox)
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	for _, d := range rootfsDirs {
		p := filepath.Join(tree, d.name)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		// Chmod, not Mkdir's mode: the umask would take bits off, and
		// Mkdir does not set the sticky bit.
		if err := os.Chmod(p, d.perm); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(tree, "bin", "busybox"), busybox, 0o755); err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	for _, a := range applets {
		// busyboxApplets checked the names; checked again here, as this
		// is where a name becomes a path.
		if !appletRE.MatchString(a) || a == "." || a == ".." {
			return fmt.Errorf("busybox applet %q: not a file name", a)
		}
		link := filepath.Join(tree, "bin", a)
		if _, err := os.Lstat(link); err == nil {
			continue // busybox itself, or a name listed twice
		}
		if err := os.Symlink("busybox", link); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, data string }{
		{"passwd", rootfsPasswd},
		{"group", rootfsGroup},
	} {
		p := filepath.Join(tree, "etc", f.name)
		if err := os.WriteFile(p, []byte(f.data), 0o644); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies the regular file src to dst, which it creates with
// mode perm.
func copyFile(dst, src string, perm fs.FileMode) error {
	return copyFileTee(dst, src, perm, nil)
}

// copyFileTee is copyFile that also writes what it copies to tee, when
// not nil.
func copyFileTee(dst, src string, perm fs.FileMode, tee io.Writer) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	var w io.Writer = out
	if tee != nil {
		w = io.MultiWriter(out, tee)
	}
	if _, err := io.Copy(w, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncFS flushes the file system that holds dir: one call for a whole
// tree of new files and directories.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

func findPackage(ps []pkgRef, name string) (pkgRef, bool) {
	for _, p := range ps {
		if p.Name == name {
			return p, true
		}
	}
	return pkgRef{}, false
}
