package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

const (
	kernelMetaPackage = "linux-image-amd64"
	busyboxPackage    = "busybox-static"
	tzdataPackage     = "tzdata"
)

// userlandPackages are the packages besides the kernel that the initramfs
// takes files from: busybox, tzdata, and the dynamically linked programs'
// (programPackages). They are small, so their .debs are kept in
// DownloadsDir, and their versions, in this order, name the initramfs.
var userlandPackages = append([]string{busyboxPackage, tzdataPackage}, programPackages...)

// Everything below comes from package metadata, so it is checked before it
// reaches a path or a command line.
var (
	kernelPackageRE = regexp.MustCompile(`^linux-image-[0-9][a-z0-9.+~-]*$`)
	// Debian version syntax, minus what a path or a command line would
	// mind: no leading '-', no '/'.
	debVersionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~:-]*$`)
	// A kernel release ("6.1.0-56-amd64") names a directory.
	kernelReleaseRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+_~-]*$`)
)

// pkgRef is a Debian binary package at one version.
type pkgRef struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

func (p pkgRef) String() string { return p.Name + " " + p.Version }

// aptListsDir is where apt keeps the package lists apt-get update fetches
// (its Dir::State::lists).
const aptListsDir = "/var/lib/apt/lists"

// packageSource is what the builder asks of apt. hostApt is the host's
// apt; tests fake it.
type packageSource interface {
	// ListsState fingerprints the local package lists, cheaply and
	// without running apt: it changes when apt-get update brings new
	// lists, and with it perhaps new candidates.
	ListsState() (string, error)
	// Candidates returns the packages apt would install now, from the
	// local lists (no network).
	Candidates(ctx context.Context) (candidates, error)
	// Download fetches p into dir and returns the file, named by
	// debFileName. onBytes (which may be nil) is told, from the calling
	// goroutine, how many bytes have come and the package's size.
	Download(ctx context.Context, p pkgRef, dir string, onBytes func(done, total int64)) (string, error)
}

// candidates are the packages an image is built from: the kernel package
// linux-image-amd64 depends on, and userlandPackages in order.
type candidates struct {
	Kernel   pkgRef
	Userland []pkgRef
}

func (c candidates) equal(d candidates) bool {
	return c.Kernel == d.Kernel && slices.Equal(c.Userland, d.Userland)
}

// newer lists the packages of c that d does not have at the same version.
func (c candidates) newer(d candidates) []string {
	var out []string
	for _, p := range append([]pkgRef{c.Kernel}, c.Userland...) {
		if p != d.Kernel && !slices.Contains(d.Userland, p) {
			out = append(out, p.String())
		}
	}
	return out
}

// hostApt is the host's apt, whose lists are in the lists directory.
// Its temporary files go below tmp (when set), as cabind writes nowhere
// but its state dir.
type hostApt struct {
	lists string
	// prefs are apt's pin files, and directories of them: a pin changes
	// the candidates without new lists.
	prefs []string
	tmp   string
}

// aptPrefs are where apt reads pins (Dir::Etc::preferences and
// preferences.d).
var aptPrefs = []string{"/etc/apt/preferences", "/etc/apt/preferences.d"}

var _ packageSource = hostApt{}

// ListsState fingerprints the index files directly in the lists directory
// by name, inode, size and modification time, reading only the directory.
// apt-get update (measured with apt 2.6) fetches a changed index into
// partial/ and renames it into place: a new inode and a new modification
// time. An index the mirror did not change keeps its inode, size and
// modification time; only its status-change time moves, which is why that
// is left out: an update that brought nothing new costs no apt run. The
// lock file and the partial/ and auxfiles/ directories are apt's working
// state, not lists. The pin files (prefs) count the same way.
func (a hostApt) ListsState() (string, error) {
	entries, err := os.ReadDir(a.lists)
	if err != nil {
		return "", fmt.Errorf("apt lists: %w", err)
	}
	h := sha256.New()
	for _, e := range entries {
		if e.Name() == "lock" {
			continue
		}
		if err := fingerprint(h, a.lists, e); err != nil {
			return "", fmt.Errorf("apt lists: %w", err)
		}
	}
	for _, p := range a.prefs {
		dir, name := filepath.Split(p)
		entries, err := os.ReadDir(p)
		if errors.Is(err, syscall.ENOTDIR) {
			entries, err = os.ReadDir(dir)
			entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool { return e.Name() != name })
		} else {
			dir = p
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("apt pins: %w", err)
		}
		for _, e := range entries {
			if err := fingerprint(h, dir, e); err != nil {
				return "", fmt.Errorf("apt pins: %w", err)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fingerprint writes to w the path, inode, size and modification time of
// the regular file e in dir; anything else, or a file gone meanwhile,
// writes nothing.
func fingerprint(w io.Writer, dir string, e fs.DirEntry) error {
	if !e.Type().IsRegular() {
		return nil
	}
	fi, err := e.Info()
	if errors.Is(err, fs.ErrNotExist) {
		// Removed by a running apt-get update: what it leaves will have
		// another fingerprint.
		return nil
	}
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat data", e.Name())
	}
	_, err = fmt.Fprintf(w, "%q %d %d %d\n", filepath.Join(dir, e.Name()), st.Ino, fi.Size(), fi.ModTime().UnixNano())
	return err
}

// Candidates asks apt-cache which kernel package linux-image-amd64 points
// at now, and for the candidate version of each of userlandPackages.
func (a hostApt) Candidates(ctx context.Context) (candidates, error) {
	recs, err := aptRecords(ctx, a.tmp, append([]string{kernelMetaPackage}, userlandPackages...)...)
	if err != nil {
		return candidates{}, fmt.Errorf("guest packages: %w", err)
	}
	kernel, err := kernelFromDepends(recs[kernelMetaPackage]["Depends"])
	if err != nil {
		return candidates{}, fmt.Errorf("guest kernel: %w", err)
	}
	userland, err := userlandFromRecords(recs)
	if err != nil {
		return candidates{}, fmt.Errorf("guest userland: %w", err)
	}
	return candidates{Kernel: kernel, Userland: userland}, nil
}

// Download is aptDownload.
func (a hostApt) Download(ctx context.Context, p pkgRef, dir string, onBytes func(done, total int64)) (string, error) {
	return aptDownload(ctx, p, dir, onBytes)
}

// aptRecords returns the fields of the candidate version of each of pkgs,
// from the local apt lists (no network), by package name. One apt-cache run
// answers for all of them: each run parses every list, about a second
// without apt's binary cache (which Debian's container images turn off).
// apt's temporary files go below tmp, if set.
func aptRecords(ctx context.Context, tmp string, pkgs ...string) (map[string]map[string]string, error) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return nil, fmt.Errorf("apt-cache not found (a Debian host is needed to fetch the guest kernel): %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-cache", append([]string{"show", "--no-all-versions", "--"}, pkgs...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := runWithTemp(cmd, tmp)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("apt-cache show: %w", ctx.Err())
	}
	recs := map[string]map[string]string{}
	for _, rec := range parseStanzas(stdout.String()) {
		// The first stanza of a name is its candidate, as apt-cache show
		// for that name alone would give first.
		if name := rec["Package"]; slices.Contains(pkgs, name) && recs[name] == nil {
			recs[name] = rec
		}
	}
	// apt-cache succeeds, saying nothing, as long as it found one of the
	// packages.
	for _, p := range pkgs {
		if recs[p] == nil {
			msg := fmt.Sprintf("apt has no package %s (run apt-get update first?)", p)
			if err != nil {
				msg += fmt.Sprintf(": %v: %s", err, firstLine(stderr.String()))
			}
			return nil, errors.New(msg)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("apt-cache show: %w: %s", err, firstLine(stderr.String()))
	}
	return recs, nil
}

// parseControl reads the first stanza of a Debian control file.
func parseControl(s string) map[string]string {
	if st := parseStanzas(s); len(st) > 0 {
		return st[0]
	}
	return map[string]string{}
}

// parseStanzas reads the stanzas of a Debian control file: "Key: value"
// lines, continuation lines starting with a space, stanzas separated by
// blank lines.
func parseStanzas(s string) []map[string]string {
	var out []map[string]string
	var fields map[string]string
	var last string
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			fields, last = nil, ""
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if fields != nil && last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if fields == nil {
			fields = map[string]string{}
			out = append(out, fields)
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return out
}

// kernelFromDepends picks the linux-image package out of a Depends field
// such as "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
func kernelFromDepends(depends string) (pkgRef, error) {
	for _, dep := range strings.Split(depends, ",") {
		// An alternative ("a | b") is taken at its first choice, as apt
		// would.
		dep, _, _ = strings.Cut(dep, "|")
		dep = strings.TrimSpace(dep)
		name, rest, _ := strings.Cut(dep, " ")
		if !strings.HasPrefix(name, "linux-image-") {
			continue
		}
		if !kernelPackageRE.MatchString(name) {
			return pkgRef{}, fmt.Errorf("kernel package name %q: unexpected form", name)
		}
		rest = strings.TrimSpace(rest)
		if !strings.HasPrefix(rest, "(=") || !strings.HasSuffix(rest, ")") {
			return pkgRef{}, fmt.Errorf("kernel dependency %q: want an exact version (= v)", dep)
		}
		ver := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(rest, "(="), ")"))
		if !debVersionRE.MatchString(ver) {
			return pkgRef{}, fmt.Errorf("kernel package version %q: unexpected form", ver)
		}
		return pkgRef{Name: name, Version: ver}, nil
	}
	return pkgRef{}, fmt.Errorf("%s: no linux-image package in Depends %q", kernelMetaPackage, depends)
}

// kernelRelease is the release a kernel package installs
// (linux-image-6.1.0-56-amd64 → 6.1.0-56-amd64), a safe path element.
func kernelRelease(pkg string) (string, error) {
	rel := strings.TrimPrefix(pkg, "linux-image-")
	if !kernelPackageRE.MatchString(pkg) || !kernelReleaseRE.MatchString(rel) || strings.Contains(rel, "..") {
		return "", fmt.Errorf("kernel package %q: no usable kernel release", pkg)
	}
	return rel, nil
}

// userlandFromRecords takes the candidate version of each of
// userlandPackages from their records.
func userlandFromRecords(recs map[string]map[string]string) ([]pkgRef, error) {
	var out []pkgRef
	for _, name := range userlandPackages {
		v := recs[name]["Version"]
		if !debVersionRE.MatchString(v) {
			return nil, fmt.Errorf("%s version %q: unexpected form", name, v)
		}
		out = append(out, pkgRef{Name: name, Version: v})
	}
	return out, nil
}

// debFileName is where a downloaded package is kept: apt's naming with the
// epoch colon escaped, without the architecture, which differs between
// packages (tzdata is "all") and tells nothing the version does not.
func debFileName(p pkgRef) string {
	return p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + ".deb"
}

// aptDownload fetches p into dir (apt-get download writes into its working
// directory) and returns the file, named by debFileName. It downloads into a
// private temporary directory first, so a failed or concurrent download
// never leaves a partial .deb under the final name.
func aptDownload(ctx context.Context, p pkgRef, dir string, onBytes func(done, total int64)) (string, error) {
	if !debVersionRE.MatchString(p.Version) || strings.HasPrefix(p.Name, "-") {
		return "", fmt.Errorf("download %s: unchecked package reference", p)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("apt-get not found (a Debian host is needed to fetch the guest kernel): %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return "", fmt.Errorf("download %s: %w", p, err)
	}
	defer os.RemoveAll(tmp)
	var total int64
	if onBytes != nil {
		// Only for the progress shown: a download whose size apt does not
		// say goes on without it.
		total, _ = aptDownloadSize(ctx, p, dir)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "--", p.Name+"="+p.Version)
	cmd.Dir = tmp
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := runPolled(cmd, dir, tmp, total, onBytes); err != nil {
		return "", fmt.Errorf("download %s (run apt-get update first?): %w: %s", p, err, aptError(stderr.String()))
	}
	debs, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("download %s: expected one .deb, found %d", p, len(debs))
	}
	// The package must be what we asked for, whatever the file is called.
	got, err := debFields(ctx, debs[0], "Package", "Version")
	if err != nil {
		return "", fmt.Errorf("download %s: %w", p, err)
	}
	if got["Package"] != p.Name || got["Version"] != p.Version {
		return "", fmt.Errorf("download %s: got %s %s", p, got["Package"], got["Version"])
	}
	dst := filepath.Join(dir, debFileName(p))
	if err := os.Rename(debs[0], dst); err != nil {
		return "", fmt.Errorf("download %s: %w", p, err)
	}
	return dst, nil
}

// aptError keeps apt's error lines, dropping its warning about the
// unsandboxed download that every root download into a private dir prints.
func aptError(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "E:") {
			keep = append(keep, l)
		}
	}
	if len(keep) == 0 {
		return strings.TrimSpace(s)
	}
	return strings.Join(keep, "; ")
}

// debFields reads control fields of a .deb. dpkg-deb's temporary files go
// beside the .deb, as the unpacking's do.
func debFields(ctx context.Context, deb string, names ...string) (map[string]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-f", "--", deb)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runWithTemp(cmd, filepath.Dir(deb)); err != nil {
		return nil, fmt.Errorf("dpkg-deb -f %s: %w: %s", filepath.Base(deb), err, firstLine(stderr.String()))
	}
	all := parseControl(stdout.String())
	out := map[string]string{}
	for _, n := range names {
		out[n] = all[n]
	}
	return out, nil
}

// debExtract unpacks deb into dir.
func debExtract(ctx context.Context, deb, dir string) error {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		return fmt.Errorf("dpkg-deb not found: %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-x", "--", deb, dir)
	cmd.Stderr = &stderr
	if err := runWithTemp(cmd, filepath.Dir(deb)); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", filepath.Base(deb), err, firstLine(stderr.String()))
	}
	return nil
}

// tempPrefix starts the names of runWithTemp's directories; leftovers of a
// crash are removed under the build lock.
const tempPrefix = ".tmp-"

// runWithTemp runs cmd with TMPDIR a fresh directory below dir, removed
// afterwards, so that what it writes for itself (apt verifying a list's
// signature) stays in cabind's state dir. With dir empty, cmd runs as is.
func runWithTemp(cmd *exec.Cmd, dir string) error {
	if dir == "" {
		return cmd.Run()
	}
	tmp, err := os.MkdirTemp(dir, tempPrefix)
	if err != nil {
		return fmt.Errorf("temporary directory for %s: %w", filepath.Base(cmd.Path), err)
	}
	defer os.RemoveAll(tmp)
	cmd.Env = append(cmd.Environ(), "TMPDIR="+tmp)
	return cmd.Run()
}
