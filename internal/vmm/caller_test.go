package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/caller/callertest"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/statedir"
)

// TestCallerSymlinkBypass is the attack: a file readable in itself but
// behind a directory only its owner may search, reached through a link in a
// directory everyone may read. The caller could not open the file, so
// cabind must not read it for them. A link to a file the caller can read
// still works, and the VM is given the file, not the link.
func TestCallerSymlinkBypass(t *testing.T) {
	dir := callertest.Tree(t)
	e := newEnv(t)
	caller := &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}

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

func (s *swappingLauncher) Launch(ctx context.Context, c hypervisor.Claim, cfg hypervisor.Config) (hypervisor.VM, error) {
	callertest.Swap(s.t, s.dir)
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
	return s.fakeLauncher.Launch(ctx, c, cfg)
}

// TestStartBootsTheCheckedFiles is the attack end to end: a caller's
// kernel and initrd pass the checks, then the caller, who owns a directory
// on their path, swaps it for a link to a secret before QEMU, running as
// root, opens them. QEMU must get the files that were checked; the VM's
// record still names their paths; cabind keeps no descriptor.
func TestStartBootsTheCheckedFiles(t *testing.T) {
	dir := callertest.SwapTree(t)
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
	s.Caller = &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
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

// A caller that is not root learns nothing of files it may not read: a
// missing file, one it may not read and one behind a directory it may not
// search are refused alike. Root hears why.
func TestCallerLearnsNothingOfUnreadableFiles(t *testing.T) {
	dir := callertest.Tree(t)
	e := newEnv(t)
	refusal := func(c *caller.Caller, name string) string {
		s := spec("k")
		s.Caller = c
		s.Kernel = filepath.Join(dir, name)
		_, _, err := e.m.Start(context.Background(), s)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("kernel %s for %+v: %v, want invalid argument", name, c, err)
		}
		return strings.ReplaceAll(err.Error(), s.Kernel, "PATH")
	}
	other := &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	missing := refusal(other, "none")
	for _, name := range []string{"private", "secret/file", "secret/none", "link"} {
		if got := refusal(other, name); got != missing {
			t.Errorf("%s: %q, want the same as for a missing file: %q", name, got, missing)
		}
	}
	if root := refusal(&caller.Caller{UID: 0}, "none"); root == missing || !strings.Contains(root, "no such file") {
		t.Errorf("root hears %q for a missing file, want why", root)
	}
}
