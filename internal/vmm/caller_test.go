package vmm

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

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
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
		f, err := c.open(path)
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
	dir := callerTree(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	other := &Caller{UID: otherUID, GIDs: []uint32{otherUID}}
	tests := []struct {
		name   string
		caller *Caller
		path   string
		want   error
		// content is what the file holds when the open succeeds.
		content string
	}{
		{"public file", other, "file", nil, "public"},
		{"file others may not read", other, "private", errPermission, ""},
		{"file in a directory others may not search", other, "secret/file", errPermission, ""},
		{"directory others may not read", other, "secret", errPermission, ""},
		{"missing file", other, "none", fs.ErrNotExist, ""},
		// open takes resolved paths only: it must not follow a link,
		// least of all from a public directory into secret/.
		{"link into a directory others may not search", other, "link", errSymlink, ""},
		{"link to a public file", other, "publink", errSymlink, ""},
		{"path through a linked directory", other, "secretdir/file", errSymlink, ""},
		// Neither blocks nor is opened for reading.
		{"fifo", other, "fifo", errNotRegular, ""},
		{"directory", other, ".", errNotRegular, ""},
		{"root directory", other, "/", errNotRegular, ""},
		// A trusted caller may read anything, but only regular files and
		// never through a link.
		{"trusted, private file", nil, "private", nil, "private"},
		{"trusted, behind a directory", nil, "secret/file", nil, "secret"},
		{"root, behind a directory", &Caller{UID: 0}, "secret/file", nil, "secret"},
		{"trusted, link", nil, "link", errSymlink, ""},
		{"trusted, fifo", nil, "fifo", errNotRegular, ""},
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
		if _, err := other.open("file"); !errors.Is(err, errRelative) {
			t.Errorf("open(relative) = %v, want %v", err, errRelative)
		}
	})
}

// TestCallerOpenOwnerAndGroup checks the owner and group bits, which need
// files owned by someone other than the test.
func TestCallerOpenOwnerAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	dir := callerTree(t)
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
		{owned, 0o600, otherUID, 0},
		{grouped, 0o640, 0, otherUID},
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
		{ownedDir, 0o700, otherUID, 0},
		{groupedDir, 0o710, 0, otherUID},
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
		{"owner", Caller{UID: otherUID}, owned, nil},
		{"not the owner", Caller{UID: otherUID + 1}, owned, errPermission},
		{"in the group", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID}}, grouped, nil},
		{"not in the group", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID + 1}}, grouped, errPermission},
		{"owner searches", Caller{UID: otherUID}, filepath.Join(ownedDir, "file"), nil},
		{"not the owner, no search", Caller{UID: otherUID + 1}, filepath.Join(ownedDir, "file"), errPermission},
		{"group searches", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID}}, filepath.Join(groupedDir, "file"), nil},
		{"not in the group, no search", Caller{UID: otherUID + 1, GIDs: []uint32{otherUID + 1}}, filepath.Join(groupedDir, "file"), errPermission},
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

// swapTree builds, in a fresh directory others may search, a public file
// and a secret one a caller may not reach, and returns the directory:
//
//	pub/         0755
//	pub/file     0644 "public"
//	secret/      0700
//	secret/file  0644 "secret"
func swapTree(t *testing.T) string {
	t.Helper()
	dir := callerTree(t)
	if err := os.Mkdir(filepath.Join(dir, "pub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pub", "file"), []byte("public"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// swapDir replaces dir/pub with a link to dir/secret, as the owner of dir
// may do at any time.
func swapDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Rename(filepath.Join(dir, "pub"), filepath.Join(dir, "pub.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("secret", filepath.Join(dir, "pub")); err != nil {
		t.Fatal(err)
	}
}

// TestCallerOpenRefusesSwappedPath is the race: the path was resolved, and
// possibly checked, when a component is swapped for a link into a
// directory the caller may not search. open must not follow it.
func TestCallerOpenRefusesSwappedPath(t *testing.T) {
	other := &Caller{UID: otherUID, GIDs: []uint32{otherUID}}
	t.Run("directory", func(t *testing.T) {
		dir := swapTree(t)
		resolved, err := filepath.EvalSymlinks(filepath.Join(dir, "pub", "file"))
		if err != nil {
			t.Fatal(err)
		}
		swapDir(t, dir)
		for _, c := range []*Caller{other, nil} {
			if f, err := openFor(t, c, resolved); !errors.Is(err, errSymlink) {
				t.Errorf("caller %v: open after the swap = %v, %v; want %v", c, f, err, errSymlink)
			}
		}
	})
	t.Run("file", func(t *testing.T) {
		dir := swapTree(t)
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
			if f, err := openFor(t, c, resolved); !errors.Is(err, errSymlink) {
				t.Errorf("caller %v: open after the swap = %v, %v; want %v", c, f, err, errSymlink)
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
	dir := swapTree(t)
	other := &Caller{UID: otherUID, GIDs: []uint32{otherUID}}
	path := filepath.Join(dir, "pub", "file")
	f, err := openFor(t, other, path)
	if err != nil {
		t.Fatal(err)
	}
	swapDir(t, dir)
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

// swappingLauncher swaps the caller's directory for a link into secret/
// just before it launches, as a caller racing QEMU would, then reads the
// kernel and initrd the way QEMU would: the open files when it is given
// them, else the paths.
type swappingLauncher struct {
	*fakeLauncher
	dir            string
	kernel, initrd string // what was read
	files          []*os.File
}

func (s *swappingLauncher) Launch(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	swapDir(s.t, s.dir)
	read := func(path string, f *os.File) string {
		if f != nil {
			s.files = append(s.files, f)
			path = "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err.Error()
		}
		return string(b)
	}
	s.kernel = read(cfg.Kernel, cfg.KernelFile)
	s.initrd = read(cfg.Initrd, cfg.InitrdFile)
	return s.fakeLauncher.Launch(ctx, cfg)
}

// TestStartBootsTheCheckedFiles is the attack end to end: a caller's
// kernel and initrd pass the checks, then the caller, who owns a directory
// on their path, swaps it for a link to a secret before QEMU, running as
// root, opens them. QEMU must get the files that were checked; the VM's
// record still names their paths; cabind keeps no descriptor.
func TestStartBootsTheCheckedFiles(t *testing.T) {
	dir := swapTree(t)
	if err := os.WriteFile(filepath.Join(dir, "pub", "initrd"), []byte("public initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret", "initrd"), []byte("secret initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	l := &swappingLauncher{fakeLauncher: e.launcher, dir: dir}
	e.m.opts.Launcher = l
	s := spec("swap")
	s.Caller = &Caller{UID: otherUID, GIDs: []uint32{otherUID}}
	s.Kernel = filepath.Join(dir, "pub", "file")
	s.Initrd = filepath.Join(dir, "pub", "initrd")
	if _, _, err := e.m.Start(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if l.kernel != "public" || l.initrd != "public initrd" {
		t.Errorf("QEMU would boot kernel %q and initrd %q, want the files checked", l.kernel, l.initrd)
	}
	rec, err := readRecord(e.root.VM(statedir.VMID("", "swap")))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Kernel != s.Kernel || rec.Initrd != s.Initrd {
		t.Errorf("record names kernel %q and initrd %q, want %q and %q", rec.Kernel, rec.Initrd, s.Kernel, s.Initrd)
	}
	if len(l.files) != 2 {
		t.Fatalf("launched with %d open files, want 2", len(l.files))
	}
	for _, f := range l.files {
		if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s still open in cabind after the start: %v", f.Name(), err)
		}
	}
}
