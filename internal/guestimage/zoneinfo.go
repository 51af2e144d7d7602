package guestimage

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// defaultZone is what the guest's /etc/localtime points at until the
// agent's Maitred is told otherwise.
const defaultZone = "UTC"

// zoneEntry is one regular file or symlink of a zoneinfo tree.
type zoneEntry struct {
	Rel    string // slash-separated path inside the tree, checked by checkZonePath
	Target string // symlink target, checked by zoneLinkInside; "" for a file
}

// zoneinfoEntries lists, in lexical order, what of the zoneinfo tree at root
// goes into the guest: regular files, and symlinks whose targets stay inside
// the tree. Left out are right/ (leap-second variants: half the size, and
// no one here uses them), posix/ when it holds copies rather than links,
// links that leave the tree (tzdata has localtime -> /etc/localtime), and
// anything else. A name that fails checkZonePath fails the whole tree: a
// package holding one is not the tzdata this was written for.
func zoneinfoEntries(root string) ([]zoneEntry, error) {
	if st, err := os.Lstat(root); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("no zoneinfo directory %s", filepath.Base(root))
	}
	var out []zoneEntry
	posixCopies := false
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if err := checkZonePath(rel); err != nil {
			return err
		}
		switch {
		case rel == "right":
			if d.IsDir() {
				return fs.SkipDir
			}
		case d.Type().IsRegular():
			posixCopies = posixCopies || strings.HasPrefix(rel, "posix/")
			out = append(out, zoneEntry{Rel: rel})
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if zoneLinkInside(rel, target) {
				out = append(out, zoneEntry{Rel: rel, Target: target})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("zoneinfo: %w", err)
	}
	if posixCopies {
		out = slices.DeleteFunc(out, func(e zoneEntry) bool {
			return e.Rel == "posix" || strings.HasPrefix(e.Rel, "posix/")
		})
	}
	// /etc/localtime points there; without it every guest would start with
	// a dangling link.
	if !zoneIsFile(out, defaultZone) {
		return nil, fmt.Errorf("zoneinfo has no %s zone file", defaultZone)
	}
	return out, nil
}

// checkZonePath refuses a path from the package that could leave the tree
// or confuse whoever reads a name: every element must be printable ASCII
// without spaces, and none may start with '.' (which covers "." and "..";
// tz names never do).
func checkZonePath(rel string) error {
	if !fs.ValidPath(rel) || !zonePrintable(rel) {
		return fmt.Errorf("zoneinfo path %q: not a clean relative printable path", rel)
	}
	for _, el := range strings.Split(rel, "/") {
		if strings.HasPrefix(el, ".") {
			return fmt.Errorf("zoneinfo path %q: element %q starts with '.'", rel, el)
		}
	}
	return nil
}

// zoneLinkInside reports whether a symlink at rel (a checked path whose
// directories the walk found to be real ones) with the given target
// resolves inside the tree, whatever the tree's other links point to. The
// target must be relative and clean, so that its only ".." elements lead
// and are resolved from rel's real directory, and it may climb no higher
// than that directory is deep. What follows only descends, through real
// directories or links that are themselves inside.
func zoneLinkInside(rel, target string) bool {
	if target == "" || path.IsAbs(target) || path.Clean(target) != target || !zonePrintable(target) {
		return false
	}
	up := 0
	for rest := target; rest == ".." || strings.HasPrefix(rest, "../"); rest = strings.TrimPrefix(rest[2:], "/") {
		up++
	}
	return up <= strings.Count(rel, "/")
}

func zonePrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// zoneIsFile reports whether name is a regular file among entries, directly
// or through file links (as UTC -> Etc/UTC).
func zoneIsFile(entries []zoneEntry, name string) bool {
	byRel := map[string]zoneEntry{}
	for _, e := range entries {
		byRel[e.Rel] = e
	}
	// Debian's links are one hop; the bound stops a loop.
	for range 8 {
		e, ok := byRel[name]
		if !ok {
			return false
		}
		if e.Target == "" {
			return true
		}
		name = path.Join(path.Dir(name), e.Target)
	}
	return false
}
