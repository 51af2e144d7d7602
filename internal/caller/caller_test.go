package caller

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/caller/callertest"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// openFor opens path as c would, failing the test if that takes more than
// five seconds: opening a FIFO for reading would block until a writer came.
func openFor(t *testing.T, c *Caller, path string) (*os.File, error) {
	t.Helper()
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		f, err := c.Open(path)
		done <- result{f, err}
	}()
	select {
	case r := <-done:
		if r.f != nil {
			t.Cleanup(func() { r.f.Close() })
		}
		return r.f, r.err
	case <-time.After(5 * time.Second):
		t.Fatalf("open(%s) still blocked after 5 s", path)
		return nil, nil
	}
}

// readAll reads f from its start.
func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCallerOpen(t *testing.T) {
	dir := callertest.Tree(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	other := &Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	tests := []struct {
		name   string
		caller *Caller
		path   string
		want   error
		// content is what the file holds when the open succeeds.
		content string
	}{
		{"public file", other, "file", nil, "public"},
		{"file others may not read", other, "private", ErrPermission, ""},
		{"file in a directory others may not search", other, "secret/file", ErrPermission, ""},
		{"directory others may not read", other, "secret", ErrPermission, ""},
		{"missing file", other, "none", fs.ErrNotExist, ""},
		// open takes resolved paths only: it must not follow a link,
		// least of all from a public directory into secret/.
		{"link into a directory others may not search", other, "link", ErrSymlink, ""},
		{"link to a public file", other, "publink", ErrSymlink, ""},
		{"path through a linked directory", other, "secretdir/file", ErrSymlink, ""},
		// Neither blocks nor is opened for reading.
		{"fifo", other, "fifo", ErrNotRegular, ""},
		{"directory", other, ".", ErrNotRegular, ""},
		{"root directory", other, "/", ErrNotRegular, ""},
		// A trusted caller may read anything, but only regular files and
		// never through a link.
		{"trusted, private file", nil, "private", nil, "private"},
		{"trusted, behind a directory", nil, "secret/file", nil, "secret"},
		{"root, behind a directory", &Caller{UID: 0}, "secret/file", nil, "secret"},
		{"trusted, link", nil, "link", ErrSymlink, ""},
		{"trusted, fifo", nil, "fifo", ErrNotRegular, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			f, err := openFor(t, tt.caller, path)
			if !errors.Is(err, tt.want) {
				t.Fatalf("open(%s) = %v, want %v", tt.path, err, tt.want)
			}
			if err != nil {
				if f != nil {
					t.Errorf("open(%s) failed but returned a file", tt.path)
				}
				if strings.Contains(err.Error(), dir) {
					t.Errorf("error %q names the path", err)
				}
				return
			}
			if got := readAll(t, f); got != tt.content {
				t.Errorf("open(%s) reads %q, want %q", tt.path, got, tt.content)
			}
		})
	}
	t.Run("relative path", func(t *testing.T) {
		if _, err := other.Open("file"); !errors.Is(err, ErrRelative) {
			t.Errorf("open(relative) = %v, want %v", err, ErrRelative)
		}
	})
}

// TestCallerOpenOwnerAndGroup checks the owner and group bits, which need
// files owned by someone other than the test.
func TestCallerOpenOwnerAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	dir := callertest.Tree(t)
	owned := filepath.Join(dir, "owned")
	grouped := filepath.Join(dir, "grouped")
	ownedDir := filepath.Join(dir, "owned-dir")
	groupedDir := filepath.Join(dir, "grouped-dir")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{owned, 0o600, callertest.OtherUID, 0},
		{grouped, 0o640, 0, callertest.OtherUID},
	} {
		must(os.WriteFile(f.path, []byte("data"), f.mode))
		must(os.Chown(f.path, f.uid, f.gid))
	}
	// Directories only their owner, or their group, may search, holding
	// a file anyone may read.
	for _, d := range []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{ownedDir, 0o700, callertest.OtherUID, 0},
		{groupedDir, 0o710, 0, callertest.OtherUID},
	} {
		must(os.Mkdir(d.path, 0o700))
		must(os.WriteFile(filepath.Join(d.path, "file"), []byte("data"), 0o644))
		must(os.Chown(d.path, d.uid, d.gid))
		must(os.Chmod(d.path, d.mode))
	}
	tests := []struct {
		name   string
		caller Caller
		path   string
		want   error
	}{
		{"owner", Caller{UID: callertest.OtherUID}, owned, nil},
		{"not the owner", Caller{UID: callertest.OtherUID + 1}, owned, ErrPermission},
		{"in the group", Caller{UID: callertest.OtherUID + 1, GIDs: []uint32{callertest.OtherUID}}, grouped, nil},
		{"not in the group", Caller{UID: callertest.OtherUID + 1, GIDs: []uint32{callertest.OtherUID + 1}}, grouped, ErrPermission},
		{"owner searches", Caller{UID: callertest.OtherUID}, filepath.Join(ownedDir, "file"), nil},
		{"not the owner, no search", Caller{UID: callertest.OtherUID + 1}, filepath.Join(ownedDir, "file"), ErrPermission},
		{"group searches", Caller{UID: callertest.OtherUID + 1, GIDs: []uint32{callertest.OtherUID}}, filepath.Join(groupedDir, "file"), nil},
		{"not in the group, no search", Caller{UID: callertest.OtherUID + 1, GIDs: []uint32{callertest.OtherUID + 1}}, filepath.Join(groupedDir, "file"), ErrPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := openFor(t, &tt.caller, tt.path)
			if !errors.Is(err, tt.want) {
				t.Fatalf("open = %v, want %v", err, tt.want)
			}
			if err == nil && readAll(t, f) != "data" {
				t.Error("opened file does not hold its data")
			}
		})
	}
}

// TestCallerOpenRefusesSwappedPath is the race: the path was resolved, and
// possibly checked, when a component is swapped for a link into a
// directory the caller may not search. open must not follow it.
func TestCallerOpenRefusesSwappedPath(t *testing.T) {
	other := &Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	t.Run("directory", func(t *testing.T) {
		dir := callertest.SwapTree(t)
		resolved, err := filepath.EvalSymlinks(filepath.Join(dir, "pub", "file"))
		if err != nil {
			t.Fatal(err)
		}
		callertest.Swap(t, dir)
		for _, c := range []*Caller{other, nil} {
			if f, err := openFor(t, c, resolved); !errors.Is(err, ErrSymlink) {
				t.Errorf("caller %v: open after the swap = %v, %v; want %v", c, f, err, ErrSymlink)
			}
		}
	})
	t.Run("file", func(t *testing.T) {
		dir := callertest.SwapTree(t)
		resolved, err := filepath.EvalSymlinks(filepath.Join(dir, "pub", "file"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(resolved); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "secret", "file"), resolved); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*Caller{other, nil} {
			if f, err := openFor(t, c, resolved); !errors.Is(err, ErrSymlink) {
				t.Errorf("caller %v: open after the swap = %v, %v; want %v", c, f, err, ErrSymlink)
			}
		}
	})
}

// TestCallerOpenOutlivesSwap is the race after the check: the path is
// swapped once open has checked it. Whoever reads the path from then on
// (as QEMU did when it was given -kernel PATH) reads the secret; the file
// open returned, reopened the way QEMU reopens /proc/self/fd/N, is still the
// public one.
func TestCallerOpenOutlivesSwap(t *testing.T) {
	dir := callertest.SwapTree(t)
	other := &Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	path := filepath.Join(dir, "pub", "file")
	f, err := openFor(t, other, path)
	if err != nil {
		t.Fatal(err)
	}
	callertest.Swap(t, dir)
	if b, err := os.ReadFile(path); err != nil || string(b) != "secret" {
		t.Fatalf("after the swap the path reads %q, %v; the test's swap did not work", b, err)
	}
	if got := readAll(t, f); got != "public" {
		t.Errorf("the opened file reads %q, want %q", got, "public")
	}
	b, err := os.ReadFile("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil || string(b) != "public" {
		t.Errorf("the opened file through /proc/self/fd reads %q, %v; want %q", b, err, "public")
	}
}

func TestContext(t *testing.T) {
	if c := FromContext(context.Background()); c != nil {
		t.Errorf("caller of a bare context = %+v, want none (trusted)", c)
	}
	want := &Caller{UID: 1000, GIDs: []uint32{1000, 27}}
	if got := FromContext(NewContext(context.Background(), want)); got != want {
		t.Errorf("FromContext = %+v, want %+v", got, want)
	}
}

func TestOwner(t *testing.T) {
	alice, bob := &Caller{UID: 1001}, &Caller{UID: 1002}
	for _, c := range []struct {
		name   string
		c      *Caller
		asked  string
		want   string
		denied bool
	}{
		{"daemon, any owner", nil, "someone", "someone", false},
		{"root, default owner", &Caller{UID: 0}, "", "", false},
		{"root, any owner", &Caller{UID: 0}, "user-1001", "user-1001", false},
		{"user, none named", alice, "", "user-1001", false},
		{"user, its own", alice, "user-1001", "user-1001", false},
		{"user, another's", alice, "user-1002", "", true},
		{"user, root's default", alice, "cryptohome-hash", "", true},
	} {
		got, err := c.c.Owner(c.asked)
		if c.denied {
			if !errors.Is(err, errdefs.ErrPermissionDenied) {
				t.Errorf("%s: Owner(%q) = %q, %v; want permission denied", c.name, c.asked, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: Owner(%q) = %q, %v; want %q", c.name, c.asked, got, err, c.want)
		}
	}
	if !alice.Sees("user-1001") || alice.Sees("user-1002") || alice.Sees("") || bob.Sees("user-1001") {
		t.Error("a user sees another's VMs, or not its own")
	}
	if !(&Caller{UID: 0}).Sees("user-1001") || !(*Caller)(nil).Sees("x") {
		t.Error("root does not see every owner's VMs")
	}
}
