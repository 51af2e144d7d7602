package caller

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// The fuzzed tree's owner, and callers that are its owner, in its group,
// or neither. When the tests run as root the tree is given to made-up ids;
// otherwise it stays the test user's.
type fuzzIDs struct {
	owner, group uint32
	callers      []*Caller
}

// fuzzTree builds, in a fresh directory, files and directories of every
// kind of permission for the owner, the group and others, links, and a
// FIFO:
//
//	pub 0644  own 0600  grp 0640  none 0000  odd 0604  fifo 0666
//	x711/ x700/ x750/ r644/ x705/   each holding f 0644
//	sub/deep/f 0644
//	ln -> x700/f  lndir -> x700  lnpub -> pub  lnup -> ..
func fuzzTree(f *testing.F) (string, fuzzIDs) {
	dir, err := os.MkdirTemp("", "cabin-fuzz-caller")
	if err != nil {
		f.Fatal(err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		f.Fatal(err)
	}
	dirs := map[string]os.FileMode{"x711": 0o711, "x700": 0o700, "x750": 0o750, "r644": 0o644, "x705": 0o705}
	f.Cleanup(func() {
		// Without root, r644's owner may not search it to empty it.
		for name := range dirs {
			os.Chmod(filepath.Join(dir, name), 0o700)
		}
		os.RemoveAll(dir)
	})
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o755))
	for name, perm := range map[string]os.FileMode{"pub": 0o644, "own": 0o600, "grp": 0o640, "none": 0, "odd": 0o604} {
		must(os.WriteFile(filepath.Join(dir, name), []byte(name), 0o600))
		must(os.Chmod(filepath.Join(dir, name), perm))
	}
	for name, perm := range dirs {
		must(os.Mkdir(filepath.Join(dir, name), 0o700))
		must(os.WriteFile(filepath.Join(dir, name, "f"), []byte(name), 0o644))
		must(os.Chmod(filepath.Join(dir, name), perm))
	}
	must(os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sub", "deep", "f"), []byte("deep"), 0o644))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o666))
	must(os.Chmod(filepath.Join(dir, "fifo"), 0o666))
	must(os.Symlink(filepath.Join(dir, "x700", "f"), filepath.Join(dir, "ln")))
	must(os.Symlink("x700", filepath.Join(dir, "lndir")))
	must(os.Symlink("pub", filepath.Join(dir, "lnpub")))
	must(os.Symlink("..", filepath.Join(dir, "lnup")))

	ids := fuzzIDs{owner: uint32(os.Getuid()), group: uint32(os.Getgid())}
	if ids.owner == 0 {
		ids.owner, ids.group = 23456, 23457
		must(filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(ids.owner), int(ids.group))
		}))
	}
	ids.callers = []*Caller{
		nil,
		{UID: 0},
		{UID: ids.owner, GIDs: []uint32{ids.group}},
		{UID: ids.owner + 2, GIDs: []uint32{ids.owner + 2, ids.group}},
		{UID: ids.owner + 3, GIDs: []uint32{ids.owner + 3}},
	}
	return dir, ids
}

// outcome is what Open should do with a path.
type outcome int

const (
	opens outcome = iota
	refused
	isLink
	notRegular
	fails // any error
)

// may reports whether uid with gids has permission bit (4 read, 1
// search) on fi, by the owner/group/other rules; uid 0 may do anything.
func may(fi os.FileInfo, uid uint32, gids []uint32, bit os.FileMode) bool {
	if uid == 0 {
		return true
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == uid:
		return perm&(bit<<6) != 0
	case slices.Contains(gids, st.Gid):
		return perm&(bit<<3) != 0
	default:
		return perm&bit != 0
	}
}

// expect walks path as the rules say Open must: from "/", a component at
// a time, never following a link, the caller needing search permission on
// every directory it looks in and read permission on the file, which must
// be a regular one. The process needs the same permissions for itself. It
// gives the file Open must open, and inside false when the walk leaves
// dir and the directories above it, where the test does not go.
func expect(c *Caller, self *Caller, path, dir string) (outcome, string, bool) {
	uid := func(c *Caller) (uint32, []uint32) {
		if c == nil {
			return 0, nil
		}
		return c.UID, c.GIDs
	}
	cu, cg := uid(c)
	su, sg := uid(self)
	inside := func(p string) bool {
		return p == dir || strings.HasPrefix(p, dir+"/") || p == "/" || strings.HasPrefix(dir, p+"/")
	}
	names := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	cur := "/"
	for i, name := range names {
		fi, err := os.Stat(cur)
		if err != nil {
			return fails, "", true
		}
		if !may(fi, cu, cg, 1) {
			return refused, "", true
		}
		if !may(fi, su, sg, 1) {
			return fails, "", true
		}
		next := filepath.Join(cur, name)
		if strings.ContainsRune(name, 0) {
			return fails, "", true
		}
		if name == "." {
			next = cur
		}
		if !inside(next) {
			return fails, "", false
		}
		li, err := os.Lstat(next)
		switch {
		case err != nil:
			return fails, "", true
		case li.Mode()&os.ModeSymlink != 0:
			return isLink, "", true
		case i < len(names)-1 && !li.IsDir():
			return fails, "", true
		}
		cur = next
	}
	fi, err := os.Lstat(cur)
	switch {
	case err != nil:
		return fails, "", true
	case !may(fi, cu, cg, 4):
		return refused, "", true
	case !fi.Mode().IsRegular():
		return notRegular, "", true
	case !may(fi, su, sg, 4):
		return fails, "", true
	}
	return opens, cur, true
}

// FuzzOpen opens arbitrary paths inside a tree of files of every kind of
// permission, for callers that own the tree, share its group, are neither,
// or are trusted. Open must do exactly what a walk by the rules says (see
// expect): open the file the path names when the caller could, refuse
// with ErrPermission when it could not, never follow a link (ErrSymlink)
// and open nothing but a regular file (ErrNotRegular, a FIFO included,
// without blocking).
func FuzzOpen(f *testing.F) {
	for _, p := range []string{
		"pub", "own", "grp", "none", "odd", "fifo", "x711/f", "x700/f", "x750/f", "r644/f", "x705/f",
		"sub/deep/f", "ln", "lndir/f", "lnpub", "lnup", "lnup/pub", "x700/../pub", "x711/../x700/f",
		"sub/../sub/./deep//f", "../" + "pub", "pub/", "pub/.", "pub/..", ".", "..", "", "missing",
		"sub/deep/../../pub", "r644", "x\x00", strings.Repeat("a", 300),
	} {
		for who := range 5 {
			f.Add(p, uint8(who))
		}
	}
	dir, ids := fuzzTree(f)
	self := &Caller{UID: uint32(os.Geteuid())}
	if self.UID != 0 {
		groups, err := os.Getgroups()
		if err != nil {
			f.Fatal(err)
		}
		self.GIDs = append(self.GIDs, uint32(os.Getegid()))
		for _, g := range groups {
			self.GIDs = append(self.GIDs, uint32(g))
		}
	}
	f.Fuzz(func(t *testing.T, rel string, who uint8) {
		c := ids.callers[int(who)%len(ids.callers)]
		path := dir + "/" + rel
		want, file, inside := expect(c, self, path, dir)
		if !inside {
			return
		}
		got, err := c.Open(path)
		if got != nil {
			defer got.Close()
		}
		switch want {
		case opens:
			if err != nil {
				t.Fatalf("%q for %+v: %v, want %s opened", rel, c, err, file)
			}
			gi, err := got.Stat()
			if err != nil {
				t.Fatal(err)
			}
			wi, err := os.Stat(file)
			if err != nil || !os.SameFile(gi, wi) {
				t.Fatalf("%q for %+v opened a file other than %s", rel, c, file)
			}
			return
		case refused:
			if !errors.Is(err, ErrPermission) {
				t.Fatalf("%q for %+v: %v, %v; want ErrPermission", rel, c, got, err)
			}
		case isLink:
			if !errors.Is(err, ErrSymlink) {
				t.Fatalf("%q for %+v: %v, %v; want ErrSymlink", rel, c, got, err)
			}
		case notRegular:
			if !errors.Is(err, ErrNotRegular) {
				t.Fatalf("%q for %+v: %v, %v; want ErrNotRegular", rel, c, got, err)
			}
		default:
			if err == nil {
				t.Fatalf("%q for %+v: opened %s, want an error", rel, c, got.Name())
			}
		}
		if got != nil {
			t.Fatalf("%q for %+v: a file as well as the error %v", rel, c, err)
		}
		if err != nil && strings.Contains(err.Error(), dir) {
			t.Fatalf("%q for %+v: error %q names the path", rel, c, err)
		}
	})
}
