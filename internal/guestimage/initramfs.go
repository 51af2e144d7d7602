package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// addChecked adds the host file src as name, checking that what is
// written is the file whose digest (sum) names the image: a binary
// replaced during a build would otherwise sit in the cache under another
// binary's name.
func addChecked(cw *cpioWriter, name, src, sum string) error {
	h := sha256.New()
	if err := cw.FileFromDiskTee(name, 0o755, src, h); err != nil {
		return err
	}
	return checkDigest(src, h, sum)
}

// checkDigest says whether h, fed src's bytes as they were copied, is the
// digest (sum) that names the image: a binary replaced during a build
// would otherwise sit in the cache under another binary's name.
func checkDigest(src string, h hash.Hash, sum string) error {
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("%s changed while the image was built (sha256 %s, expected %s); build again", src, got, sum)
	}
	return nil
}

// Directories the agent mounts on or writes to before it could create them
// itself. Mode matters for /tmp (sticky, world-writable) and /root.
var initramfsDirs = []struct {
	name string
	perm fs.FileMode
}{
	{"/dev", 0o755},
	{"/etc", 0o755},
	{"/mnt", 0o755},
	{"/proc", 0o555},
	{"/root", 0o700},
	{"/run", 0o755},
	{"/sys", 0o555},
	{"/tmp", 0o777 | fs.ModeSticky},
}

// writeInitramfs writes the archive of in's boot files to dst atomically
// and returns its size. Entries go in a fixed order so the same inputs
// give the same bytes.
func writeInitramfs(dst string, in *inputs) (int64, error) {
	var size int64
	err := writeAtomic(dst, 0o644, func(f *os.File) error {
		cw := newCPIOWriter(f)
		if err := fillInitramfs(cw, in); err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		size = cw.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("write initramfs: %w", err)
	}
	return size, nil
}

func fillInitramfs(cw *cpioWriter, in *inputs) error {
	for _, d := range initramfsDirs {
		if err := cw.Dir(d.name, d.perm); err != nil {
			return err
		}
	}
	// PID 1 gets its stdio from /dev/console before it can mount devtmpfs;
	// without the node the kernel starts init with no console at all.
	if err := cw.CharDev("/dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := cw.CharDev("/dev/null", 0o666, 1, 3); err != nil {
		return err
	}
	if err := addChecked(cw, bootcfg.Init, in.agent, in.agentSHA); err != nil {
		return fmt.Errorf("add agent: %w", err)
	}
	// What the share holds (writeSystem), linked from where it is looked
	// for.
	if err := cw.Symlink(bootcfg.RuntimeBinary, bootcfg.SystemPath(bootcfg.RuntimeBinary)); err != nil {
		return err
	}
	if err := cw.FileFromDisk(bootcfg.Busybox, 0o755, in.busybox); err != nil {
		return fmt.Errorf("add busybox: %w", err)
	}
	for _, a := range sortedCopy(in.applets) {
		name := path.Join(bootcfg.BusyboxBinDir, a)
		// Never let an applet (busybox has "init") replace the agent, or
		// busybox itself.
		if name == bootcfg.Init || cw.Has(name) {
			continue
		}
		if err := cw.Symlink(name, bootcfg.Busybox); err != nil {
			return err
		}
	}
	for _, f := range in.programs {
		target := f.Target
		if target == "" {
			target = bootcfg.SystemPath(f.Name)
		}
		if err := cw.Symlink(f.Name, target); err != nil {
			return err
		}
	}
	if err := cw.Dir(bootcfg.ModulesDir, 0o755); err != nil {
		return err
	}
	for _, rel := range append(slices.Clone(in.boot), in.share...) {
		if err := checkModulePath(rel); err != nil {
			return err
		}
		if err := cw.FileFromDisk(path.Join(bootcfg.ModulesDir, rel), 0o644, filepath.Join(in.modRoot, filepath.FromSlash(rel))); err != nil {
			return fmt.Errorf("add module: %w", err)
		}
	}
	for _, l := range []struct {
		name  string
		paths []string
	}{{bootcfg.BootModules, in.boot}, {bootcfg.ShareModules, in.share}, {bootcfg.LateModules, in.late}} {
		var b strings.Builder
		for _, p := range l.paths {
			if err := checkModulePath(p); err != nil {
				return err
			}
			b.WriteString(p + "\n")
		}
		if err := cw.File(l.name, 0o644, int64(b.Len()), strings.NewReader(b.String())); err != nil {
			return err
		}
	}
	if err := cw.Symlink(bootcfg.Zoneinfo, bootcfg.SystemPath(bootcfg.Zoneinfo)); err != nil {
		return err
	}
	// An absolute target, as Maitred's SetTimezone writes, so the guest
	// starts in UTC with the same kind of link it may later get. It
	// resolves once the share is mounted; until then the guest's time is
	// UTC all the same.
	return cw.Symlink(bootcfg.Localtime, path.Join(bootcfg.Zoneinfo, defaultZone))
}

// checkModulePath refuses module paths that would leave ModulesDir or break
// the one-per-line lists (no whitespace, so a reader may split on it).
func checkModulePath(rel string) error {
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") ||
		strings.ContainsAny(rel, " \t\r\n\x00") || !strings.HasSuffix(rel, ".ko") {
		return fmt.Errorf("module path %q: not a clean relative .ko path", rel)
	}
	return nil
}

// appletRE is what a busybox applet may be called ("[" and "[[" included).
var appletRE = regexp.MustCompile(`^[A-Za-z0-9_.\[\]-]+$`)

// busyboxApplets runs the (static) busybox binary to list its applets.
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--list")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("busybox --list: %w: %s", err, firstLine(stderr.String()))
	}
	var out []string
	for _, a := range strings.Fields(stdout.String()) {
		if !appletRE.MatchString(a) || a == "." || a == ".." {
			return nil, fmt.Errorf("busybox --list: odd applet name %q", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("busybox --list: no applets")
	}
	return out, nil
}
