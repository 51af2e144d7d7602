// Package tarcopy copies files and directory trees as tar streams, as
// docker cp does, between a directory and an io stream: Archive writes one
// entry (a file, a symlink or a whole tree) without following symlinks;
// Extract writes an archive below a directory with every name checked and
// every path resolved beneath it, staged beside the destination and
// renamed into place only once the whole archive came. The agent uses it
// inside a container's root, the CLI on the host; Place says where a copy
// lands by docker cp's rules, for both.
package tarcopy

import (
	"fmt"
	"path"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Limits bound one archive, read or written.
type Limits struct {
	// Entries is the most entries; Bytes the most bytes of regular files.
	Entries int
	Bytes   int64
}

// DefaultLimits are what cabin cp allows each way: a copy lands in a
// guest's RAM (tmpfs layers) or a host's disk.
var DefaultLimits = Limits{Entries: 100000, Bytes: 1 << 30}

// maxLinkTarget bounds a symlink's target (PATH_MAX).
const maxLinkTarget = 4096

// CleanName checks an entry's name and returns it clean, without a leading
// "./" or a trailing "/": relative, with no ".." element, no NUL, and
// not empty.
func CleanName(field, name string) (string, error) {
	n := strings.TrimSuffix(name, "/")
	for strings.HasPrefix(n, "./") {
		n = strings.TrimLeft(n[2:], "/")
	}
	switch {
	case n == "" || n == ".":
		return "", errdefs.InvalidArgument(field, "an empty name")
	case strings.ContainsRune(n, 0):
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q holds a NUL byte", name))
	case path.IsAbs(n):
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is absolute; names in the archive must be relative", name))
	case len(n) > 4096:
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("a name of %d bytes", len(n)))
	}
	for _, e := range strings.Split(n, "/") {
		if e == ".." {
			return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q has a %q element", name, ".."))
		}
		if len(e) > 255 {
			return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q has an element of %d bytes", name, len(e)))
		}
	}
	return path.Clean(n), nil
}

// Dest is what a copy's destination is when the copy starts.
type Dest struct {
	// Exists: something is there (a symlink to it followed); IsDir: a
	// directory. TrailingSlash: the user wrote PATH/, so it must be one.
	Exists, IsDir, TrailingSlash bool
}

// Placement is where an archive's top entry goes.
type Placement int

const (
	// IntoDir: the top entry goes into the destination, a directory,
	// under its own name.
	IntoDir Placement = iota
	// ContentsIntoDir: the top entry's contents go into the destination
	// directory; the entry itself is not written.
	ContentsIntoDir
	// AsDest: the top entry goes into the destination's parent under the
	// destination's name, replacing a file there.
	AsDest
)

// Place applies docker cp's rules: a directory destination receives the
// source (or, with contentsOnly, a directory source's contents); one that
// does not exist is created as a copy of the source; a file is replaced
// by a file, never by a directory.
func Place(d Dest, srcIsDir, contentsOnly bool) (Placement, error) {
	switch {
	case contentsOnly && !srcIsDir:
		return 0, errdefs.Errorf(errdefs.ErrFailedPrecondition, "the source is not a directory, so it has no contents to copy (drop the trailing /.)")
	case d.Exists && d.IsDir && contentsOnly:
		return ContentsIntoDir, nil
	case d.Exists && d.IsDir:
		return IntoDir, nil
	case d.Exists && d.TrailingSlash:
		return 0, errdefs.Errorf(errdefs.ErrFailedPrecondition, "the destination is not a directory")
	case d.Exists && srcIsDir:
		return 0, errdefs.Errorf(errdefs.ErrFailedPrecondition, "cannot copy a directory onto a file")
	case !d.Exists && d.TrailingSlash && !srcIsDir:
		return 0, errdefs.Errorf(errdefs.ErrNotFound, "the destination directory does not exist")
	}
	return AsDest, nil
}

// Rename maps names of an archive whose top entry is Top: to As (another
// top name), or, with Strip, to the names of Top's contents (Top itself
// mapping to ""). The zero Rename keeps every name.
type Rename struct {
	Top, As string
	Strip   bool
}

// For gives the rename of placement p for an archive whose top entry is
// top and a destination whose last element is destBase.
func For(p Placement, top, destBase string) Rename {
	switch p {
	case ContentsIntoDir:
		return Rename{Top: top, Strip: true}
	case AsDest:
		return Rename{Top: top, As: destBase}
	}
	return Rename{Top: top, As: top}
}

// apply maps a clean name; ok is false when the name is not Top or below
// it. The mapped name of Top with Strip is "".
func (r Rename) apply(n string) (string, bool) {
	if r.Top == "" {
		return n, true
	}
	rest, below := strings.CutPrefix(n, r.Top+"/")
	switch {
	case n == r.Top && r.Strip:
		return "", true
	case n == r.Top:
		return r.As, true
	case !below:
		return "", false
	case r.Strip:
		return rest, true
	}
	return r.As + "/" + rest, true
}
