package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// otherUID is a caller that owns none of the test's files.
const otherUID = 12345

// callerTree builds, in a fresh directory others may search, the files the
// caller tests read, and returns that directory:
//
//	file            0644
//	private         0600
//	secret/         0700, root's when tests run as root
//	secret/file     0644, readable but behind secret/
//	link            -> secret/file, the bypass: a public link to it
//	publink         -> file
//	secretdir       -> secret
func callerTree(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cabin-caller")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if !searchableByOthers(filepath.Dir(dir)) {
		t.Skipf("%s is not searchable by other users, so no file below it is readable by uid %d", filepath.Dir(dir), otherUID)
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

// searchableByOthers reports whether every directory from dir up to the
// root has its "other" search bit set.
func searchableByOthers(dir string) bool {
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

func TestCanRead(t *testing.T) {
	dir := callerTree(t)
	other := &Caller{UID: otherUID, GIDs: []uint32{otherUID}}
	tests := []struct {
		name string
		path string
		want error
	}{
		{"public file", "file", nil},
		{"file others may not read", "private", errPermission},
		{"file in a directory others may not search", "secret/file", errPermission},
		{"directory others may not read", "secret", errPermission},
		{"missing file", "none", errPermission},
		// canRead takes resolved paths only: it must not follow a link,
		// least of all from a public directory into secret/.
		{"link into a directory others may not search", "link", errSymlink},
		{"link to a public file", "publink", errSymlink},
		{"path through a linked directory", "secretdir/file", errSymlink},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := other.canRead(filepath.Join(dir, tt.path)); !errors.Is(err, tt.want) {
				t.Errorf("canRead(%s) = %v, want %v", tt.path, err, tt.want)
			}
		})
	}
	t.Run("relative path", func(t *testing.T) {
		if err := other.canRead("file"); !errors.Is(err, errRelative) {
			t.Errorf("canRead(relative) = %v, want %v", err, errRelative)
		}
	})
}

// TestCanReadOwnerAndGroup checks the owner and group bits, which need
// files owned by someone other than the test.
func TestCanReadOwnerAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	dir := callerTree(t)
	owned := filepath.Join(dir, "owned")
	grouped := filepath.Join(dir, "grouped")
	for _, f := range []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{owned, 0o600, otherUID, 0},
		{grouped, 0o640, 0, otherUID},
	} {
		if err := os.WriteFile(f.path, nil, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f.path, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		caller Caller
		path   string
		want   error
	}{
		{"owner", Caller{UID: otherUID}, owned, nil},
		{"not the owner", Caller{UID: otherUID + 1}, owned, errPermission},
		{"in the group", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID}}, grouped, nil},
		{"not in the group", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID + 1}}, grouped, errPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.caller.canRead(tt.path); !errors.Is(err, tt.want) {
				t.Errorf("canRead = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestCallerSymlinkBypass is the attack: a file readable in itself but
// behind a directory only its owner may search, reached through a link in a
// directory everyone may read. The caller could not open the file, so
// cabind must not read it for them. A link to a file the caller can read
// still works, and the VM is given the file, not the link.
func TestCallerSymlinkBypass(t *testing.T) {
	dir := callerTree(t)
	e := newEnv(t)
	caller := &Caller{UID: otherUID, GIDs: []uint32{otherUID}}

	for _, field := range []string{"kernel_path", "initrd_path"} {
		s := spec("bypass")
		s.Caller = caller
		if field == "kernel_path" {
			s.Kernel = filepath.Join(dir, "link")
		} else {
			s.Kernel = filepath.Join(dir, "file")
			s.Initrd = filepath.Join(dir, "link")
		}
		_, _, err := e.m.Start(context.Background(), s)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), field+":") {
			t.Errorf("%s through a link into secret/: %v, want invalid argument naming %s", field, err, field)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("error %q tells the caller where the link leads", err)
		}
	}
	if n := e.launcher.launches.Load(); n != 0 {
		t.Fatalf("refused specs launched %d VMs", n)
	}

	s := spec("publink")
	s.Caller = caller
	s.Kernel = filepath.Join(dir, "publink")
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatalf("kernel through a link to a readable file: %v", err)
	}
	rec, err := readRecord(e.root.VM(statedir.VMID("", "publink")))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "file"); rec.Kernel != want {
		t.Errorf("VM's kernel = %q, want the link's target %q", rec.Kernel, want)
	}
}
