// Package callertest builds the file trees that tests of callers' file
// access read: files and directories a caller other than the test's user
// may or may not reach, links between them, and the swap of a directory for
// a link that a racing caller would make.
package callertest

import (
	"os"
	"path/filepath"
	"testing"
)

// OtherUID is a caller that owns none of the test's files.
const OtherUID = 12345

// Tree builds, in a fresh directory others may search, the files the
// caller tests read, and returns that directory:
//
//	file            0644
//	private         0600
//	secret/         0700, root's when tests run as root
//	secret/file     0644, readable but behind secret/
//	link            -> secret/file, the bypass: a public link to it
//	publink         -> file
//	secretdir       -> secret
func Tree(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cabin-caller")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if !SearchableByOthers(filepath.Dir(dir)) {
		t.Skipf("%s is not searchable by other users, so no file below it is readable by uid %d", filepath.Dir(dir), OtherUID)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o755))
	must(os.WriteFile(filepath.Join(dir, "file"), []byte("public"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "private"), []byte("private"), 0o600))
	must(os.Mkdir(filepath.Join(dir, "secret"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "secret", "file"), []byte("secret"), 0o644))
	must(os.Symlink(filepath.Join(dir, "secret", "file"), filepath.Join(dir, "link")))
	must(os.Symlink("file", filepath.Join(dir, "publink")))
	must(os.Symlink("secret", filepath.Join(dir, "secretdir")))
	return dir
}

// SearchableByOthers reports whether every directory from dir up to the
// root has its "other" search bit set.
func SearchableByOthers(dir string) bool {
	for ; ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == "/" {
			return true
		}
	}
}

// SwapTree builds, in a fresh directory others may search, a public file
// and a secret one a caller may not reach, and returns the directory:
//
//	pub/         0755
//	pub/file     0644 "public"
//	secret/      0700
//	secret/file  0644 "secret"
func SwapTree(t *testing.T) string {
	t.Helper()
	dir := Tree(t)
	if err := os.Mkdir(filepath.Join(dir, "pub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pub", "file"), []byte("public"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Swap replaces dir/pub with a link to dir/secret, as the owner of dir
// may do at any time.
func Swap(t *testing.T, dir string) {
	t.Helper()
	if err := os.Rename(filepath.Join(dir, "pub"), filepath.Join(dir, "pub.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("secret", filepath.Join(dir, "pub")); err != nil {
		t.Fatal(err)
	}
}
