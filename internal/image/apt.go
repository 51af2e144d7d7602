package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

const (
	kernelMetaPackage = "linux-image-amd64"
	busyboxPackage    = "busybox-static"
	tzdataPackage     = "tzdata"
)

// userlandPackages are the packages besides the kernel that the initramfs
// takes files from. They are small, so their .debs are kept in
// DownloadsDir, and their versions, in this order, name the initramfs.
var userlandPackages = []string{busyboxPackage, tzdataPackage}

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

// aptRecord returns the fields of the candidate version of pkg, from the
// local apt lists (no network).
func aptRecord(ctx context.Context, pkg string) (map[string]string, error) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return nil, fmt.Errorf("apt-cache not found (a Debian host is needed to fetch the guest kernel): %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", "--", pkg)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stdout.Len() == 0 {
		return nil, fmt.Errorf("apt has no package %s (run apt-get update first?): %v: %s", pkg, err, firstLine(stderr.String()))
	}
	return parseControl(stdout.String()), nil
}

// parseControl reads the first stanza of a Debian control file: "Key: value"
// lines, continuation lines starting with a space.
func parseControl(s string) map[string]string {
	fields := map[string]string{}
	var last string
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}

// currentKernel asks apt which kernel package linux-image-amd64 points at
// now: the metapackage depends on exactly one versioned linux-image package.
func currentKernel(ctx context.Context) (pkgRef, error) {
	rec, err := aptRecord(ctx, kernelMetaPackage)
	if err != nil {
		return pkgRef{}, err
	}
	return kernelFromDepends(rec["Depends"])
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

// currentUserland asks apt for the candidate version of each of
// userlandPackages.
func currentUserland(ctx context.Context) ([]pkgRef, error) {
	var out []pkgRef
	for _, name := range userlandPackages {
		rec, err := aptRecord(ctx, name)
		if err != nil {
			return nil, err
		}
		v := rec["Version"]
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
func aptDownload(ctx context.Context, p pkgRef, dir string) (string, error) {
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
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "--", p.Name+"="+p.Version)
	cmd.Dir = tmp
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
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

// debFields reads control fields of a .deb.
func debFields(ctx context.Context, deb string, names ...string) (map[string]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-f", "--", deb)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
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
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", filepath.Base(deb), err, firstLine(stderr.String()))
	}
	return nil
}
