package guestimage

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// The guest's dynamically linked programs: Debian's iptables, for
// Kata's GetIPTables and SetIPTables, and e2fsprogs' mkfs.ext4, e2fsck
// and resize2fs, for Maitred's stateful disk (StartTermina, the resize
// calls). The guest has no libc of its own, so each comes with what the
// dynamic loader loads for it: the libraries its ELF file needs
// (DT_NEEDED, and theirs in turn), the loader its PT_INTERP names, and
// the plugins it opens at run time with theirs. All are taken from the
// Debian packages in programPackages, at the paths the packages give
// them, so the loader finds them on its own search path. The files are in
// the share (system.go), linked from those paths in the initramfs.

const (
	iptablesPackage  = "iptables"
	e2fsprogsPackage = "e2fsprogs"
	libcPackage      = "libc6"
)

// programPackages are the packages the programs and their libraries come
// from: iptables' own and what it depends on for the legacy backend
// (xtables-nft-multi would add libnftnl and libmnl, and the kernel's
// nf_tables; the legacy one needs neither), and e2fsprogs' with the
// libraries its three programs load.
var programPackages = []string{
	iptablesPackage, "libip4tc2", "libip6tc2", "libxtables12",
	e2fsprogsPackage, "libext2fs2", "libcom-err2", "libblkid1", "libuuid1",
	libcPackage,
}

// programs are the dynamically linked programs the image carries.
var programs = []dynProgram{iptables, mke2fs, e2fsck, resize2fs}

// dynProgram is a program of a package, and what else of it the guest
// gets.
type dynProgram struct {
	Package string
	// Path is where the package has it, slash-separated and relative;
	// the guest has it at the same place.
	Path string
	// Links are guest paths linked to it: the names it answers to.
	Links []string
	// PluginDir is where, in the package and the guest, it opens
	// plugins; Plugins are the file names of those the guest gets.
	PluginDir string
	Plugins   []string
}

// iptables is xtables-legacy-multi as iptables-save, iptables-restore
// and their IPv6 twins, with the extensions for the rules a VM's
// firewall is made of: ports, connection state, NAT, REJECT, marks,
// owners, limits, logging. The kernel modules they drive are in
// lateModuleNames.
var iptables = dynProgram{
	Package: iptablesPackage,
	Path:    "usr/sbin/xtables-legacy-multi",
	Links: []string{
		"/usr/sbin/iptables", "/usr/sbin/iptables-save", "/usr/sbin/iptables-restore",
		"/usr/sbin/ip6tables", "/usr/sbin/ip6tables-save", "/usr/sbin/ip6tables-restore",
	},
	PluginDir: "usr/lib/x86_64-linux-gnu/xtables",
	Plugins: []string{
		"libxt_standard.so", "libxt_tcp.so", "libxt_udp.so", "libipt_icmp.so", "libip6t_icmp6.so",
		"libxt_conntrack.so", "libxt_state.so", "libxt_comment.so", "libxt_multiport.so",
		"libxt_mark.so", "libxt_MARK.so", "libxt_addrtype.so", "libxt_limit.so", "libxt_owner.so",
		"libxt_NAT.so", "libxt_SNAT.so", "libxt_DNAT.so", "libxt_MASQUERADE.so", "libxt_REDIRECT.so",
		"libipt_REJECT.so", "libip6t_REJECT.so", "libxt_LOG.so",
	},
}

// mke2fs, e2fsck and resize2fs are e2fsprogs' (Debian 12 keeps them in
// /sbin, which the agent's PATH has): the stateful disk's filesystem is
// made, repaired and resized with them (internal/guest/storage). mke2fs
// has its defaults (Debian's /etc/mke2fs.conf) compiled in.
var (
	mke2fs = dynProgram{
		Package: e2fsprogsPackage,
		Path:    "sbin/mke2fs",
		Links:   []string{"/sbin/mkfs.ext4"},
	}
	e2fsck = dynProgram{
		Package: e2fsprogsPackage,
		Path:    "sbin/e2fsck",
		Links:   []string{"/sbin/fsck.ext4"},
	}
	resize2fs = dynProgram{
		Package: e2fsprogsPackage,
		Path:    "sbin/resize2fs",
	}
)

// libDirs are where the packages keep shared libraries: the dynamic
// loader's system search path on Debian, where a DT_NEEDED name is looked
// for.
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"}

// guestFile is a file of the image from an unpacked package: a copy
// of Src, or a symbolic link to Target.
type guestFile struct {
	Name   string // guest path, absolute
	Src    string // host file
	Target string // for a link
	Mode   fs.FileMode
}

// programFiles returns the files progs need in the guest, from the
// packages unpacked below work (one directory each, named after the
// package), in a fixed order, each once (they share libc and the
// loader). A library or plugin none of the packages has is an error
// naming it.
func programFiles(work string, pkgs []string, progs ...dynProgram) ([]guestFile, error) {
	r := &closure{work: work, pkgs: pkgs, seen: map[string]bool{}}
	for _, p := range progs {
		if err := r.program(p); err != nil {
			return nil, err
		}
	}
	return r.files, nil
}

// program adds p's files.
func (r *closure) program(p dynProgram) error {
	prog := filepath.Join(r.work, p.Package, filepath.FromSlash(p.Path))
	if err := r.add("/"+p.Path, prog, 0o755, true); err != nil {
		return err
	}
	for _, l := range p.Links {
		r.files = append(r.files, guestFile{Name: l, Target: "/" + p.Path})
	}
	dir := filepath.Join(r.work, p.Package, filepath.FromSlash(p.PluginDir))
	for _, name := range p.Plugins {
		if name != path.Base(name) || !strings.HasSuffix(name, ".so") {
			return fmt.Errorf("%s: plugin %q is not a file name", p.Path, name)
		}
		guest := "/" + path.Join(p.PluginDir, name)
		src := filepath.Join(dir, name)
		st, err := os.Lstat(src)
		if err != nil {
			return fmt.Errorf("%s: plugin %s: %w", p.Package, name, err)
		}
		// Some are links to another of the directory (libxt_SNAT.so →
		// libxt_NAT.so): kept as links, the target listed too.
		if st.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(src)
			if err != nil {
				return err
			}
			if target != path.Base(target) || !slices.Contains(p.Plugins, target) {
				return fmt.Errorf("%s: plugin %s links to %q, not to a plugin listed", p.Package, name, target)
			}
			r.files = append(r.files, guestFile{Name: guest, Target: target})
			continue
		}
		if err := r.add(guest, src, 0o644, false); err != nil {
			return err
		}
	}
	return nil
}

// closure collects a program's files and their libraries.
type closure struct {
	work  string
	pkgs  []string
	seen  map[string]bool // guest paths added
	files []guestFile
}

// add adds the ELF file src as guest, then the libraries it needs and,
// for a program, its loader.
func (c *closure) add(guest, src string, mode fs.FileMode, program bool) error {
	if c.seen[guest] {
		return nil
	}
	c.seen[guest] = true
	ef, err := elf.Open(src)
	if err != nil {
		return fmt.Errorf("%s: %w", guest, err)
	}
	defer ef.Close()
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s: built for %v %v, want x86-64", guest, ef.Class, ef.Machine)
	}
	c.files = append(c.files, guestFile{Name: guest, Src: src, Mode: mode})
	needed, err := ef.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: DT_NEEDED: %w", guest, err)
	}
	for _, soname := range needed {
		if soname != path.Base(soname) {
			return fmt.Errorf("%s needs %q, not a library name", guest, soname)
		}
		lib, libGuest, err := c.findLibrary(soname)
		if err != nil {
			return fmt.Errorf("%s needs %s: %w", guest, soname, err)
		}
		if err := c.add(libGuest, lib, 0o755, false); err != nil {
			return err
		}
	}
	if !program {
		return nil
	}
	interp, err := interpreter(ef)
	if err != nil {
		return fmt.Errorf("%s: %w", guest, err)
	}
	if interp == "" {
		return fmt.Errorf("%s: no PT_INTERP: not a dynamically linked program", guest)
	}
	// Debian's /lib64/ld-linux-x86-64.so.2 is a link into libc6's
	// directory, as the loader's own name is there.
	real, realGuest, err := c.resolve(interp)
	if err != nil {
		return fmt.Errorf("%s: loader %s: %w", guest, interp, err)
	}
	if err := c.add(realGuest, real, 0o755, false); err != nil {
		return err
	}
	if realGuest != interp && !c.seen[interp] {
		c.seen[interp] = true
		c.files = append(c.files, guestFile{Name: interp, Target: realGuest})
	}
	return nil
}

// findLibrary finds soname in the packages' library directories, as the
// loader would on its search path, and returns the file (links
// followed) and the guest path it is loaded from.
func (c *closure) findLibrary(soname string) (string, string, error) {
	for _, dir := range libDirs {
		for _, pkg := range c.pkgs {
			if _, err := os.Lstat(filepath.Join(c.work, pkg, filepath.FromSlash(dir), soname)); err != nil {
				continue
			}
			src, _, err := c.resolveIn(pkg, "/"+path.Join(dir, soname))
			if err != nil {
				return "", "", err
			}
			return src, "/" + path.Join(dir, soname), nil
		}
	}
	return "", "", fmt.Errorf("in none of %s (%s)", strings.Join(c.pkgs, ", "), strings.Join(libDirs, ", "))
}

// resolve finds the guest path p in the packages, following links, and
// returns the host file and the guest path it really is at.
func (c *closure) resolve(p string) (string, string, error) {
	for _, pkg := range c.pkgs {
		if _, err := os.Lstat(filepath.Join(c.work, pkg, filepath.FromSlash(p))); err == nil {
			return c.resolveIn(pkg, p)
		}
	}
	return "", "", errors.New("in none of the packages")
}

// resolveIn follows the links of p, a guest path, within pkg's tree
// (absolute targets are the package's, relative ones its directory's),
// never out of it.
func (c *closure) resolveIn(pkg, p string) (string, string, error) {
	root := filepath.Join(c.work, pkg)
	for range 8 {
		if !path.IsAbs(p) || path.Clean(p) != p {
			return "", "", fmt.Errorf("%q is not a clean absolute path", p)
		}
		host := filepath.Join(root, filepath.FromSlash(p))
		st, err := os.Lstat(host)
		if err != nil {
			return "", "", err
		}
		switch {
		case st.Mode().IsRegular():
			return host, p, nil
		case st.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(host)
			if err != nil {
				return "", "", err
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(p), target)
			}
			p = path.Clean(target)
		default:
			return "", "", fmt.Errorf("%s in %s is not a regular file", p, pkg)
		}
	}
	return "", "", fmt.Errorf("%s in %s: too many links", p, pkg)
}

// interpreter returns the loader a program's PT_INTERP names.
func interpreter(ef *elf.File) (string, error) {
	for _, p := range ef.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("PT_INTERP: %w", err)
		}
		s := strings.TrimRight(string(b), "\x00")
		if !path.IsAbs(s) || path.Clean(s) != s {
			return "", fmt.Errorf("PT_INTERP %q is not a clean absolute path", s)
		}
		return s, nil
	}
	return "", nil
}
