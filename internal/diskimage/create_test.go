package diskimage

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

func TestCreate(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	for _, c := range []struct {
		name string
		req  CreateRequest
		// want is the allocated size at least / at most.
		minAlloc, maxAlloc int64
	}{
		{"raw sparse", CreateRequest{Format: FormatRaw, Size: 64 << 20, Allocation: AllocSparse}, 0, 1 << 20},
		{"raw preallocated", CreateRequest{Format: FormatRaw, Size: 8 << 20}, 8 << 20, 9 << 20},
		{"qcow2", CreateRequest{Format: FormatQcow2, Size: 1 << 30, Allocation: AllocSparse}, 0, 1 << 20},
		{"qcow2 preallocated", CreateRequest{Format: FormatQcow2, Size: 8 << 20}, 8 << 20, 10 << 20},
		{"raw ext4", CreateRequest{Format: FormatRaw, Size: 64 << 20, Allocation: AllocSparse, Filesystem: FilesystemExt4,
			MkfsOpts: []string{"-b", "4096", "-L", "data", "-E", "lazy_itable_init=1"}, Tune2fsOpts: []string{"-c", "0"}}, 1, 16 << 20},
		{"qcow2 ext4", CreateRequest{Format: FormatQcow2, Size: 64 << 20, Allocation: AllocSparse, Filesystem: FilesystemExt4}, 1, 16 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.req.Key = Key{Owner: "alice", Name: strings.ReplaceAll(c.name, " ", "-")}
			res, err := s.Create(ctx, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Existed || !strings.HasSuffix(res.Path, c.req.Name+c.req.Format.ext()) {
				t.Fatalf("result %+v", res)
			}
			if a := allocated(t, res.Path); a < c.minAlloc || a > c.maxAlloc {
				t.Errorf("allocated %d bytes, want %d to %d", a, c.minAlloc, c.maxAlloc)
			}
			size, err := virtualSize(res.Path, c.req.Format)
			if err != nil || size != int64(c.req.Size) {
				t.Errorf("virtual size %d (%v), want %d", size, err, c.req.Size)
			}
			if c.req.Filesystem != "" && c.req.Format == FormatRaw && !s.isExt(ctx, res.Path) {
				t.Errorf("no ext4 in %s", res.Path)
			}
			again, err := s.Create(ctx, c.req)
			if err != nil || !again.Existed || again.Path != res.Path {
				t.Errorf("second create = %+v, %v; want it existing", again, err)
			}
		})
	}
	// A name in one format is taken in the others.
	res, err := s.Create(ctx, CreateRequest{Key: Key{Owner: "alice", Name: "qcow2"}, Format: FormatRaw, Size: 1 << 20})
	if err != nil || !res.Existed {
		t.Errorf("raw create of a qcow2's name = %+v, %v; want existing", res, err)
	}
	noLeftovers(t, s, "raw-sparse", "raw-preallocated", "qcow2", "qcow2-preallocated", "raw-ext4", "qcow2-ext4")
}

func TestCreateBadInput(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	free, _ := freeSpace(s.opts.Root.Dir())
	for _, c := range []struct {
		name string
		req  CreateRequest
		want error
	}{
		{"slash", CreateRequest{Key: Key{Name: "a/b"}, Format: FormatRaw, Size: 1 << 20}, errdefs.ErrInvalidArgument},
		{"dotdot", CreateRequest{Key: Key{Name: ".."}, Format: FormatRaw, Size: 1 << 20}, errdefs.ErrInvalidArgument},
		{"dotdot path", CreateRequest{Key: Key{Name: "../../etc"}, Format: FormatRaw, Size: 1 << 20}, errdefs.ErrInvalidArgument},
		{"nul", CreateRequest{Key: Key{Name: "a\x00b"}, Format: FormatRaw, Size: 1 << 20}, errdefs.ErrInvalidArgument},
		{"empty", CreateRequest{Key: Key{Name: ""}, Format: FormatRaw, Size: 1 << 20}, errdefs.ErrInvalidArgument},
		{"size 0 preallocated", CreateRequest{Key: alice, Format: FormatRaw, Allocation: AllocPreallocate}, errdefs.ErrInvalidArgument},
		{"size not a multiple of 512", CreateRequest{Key: alice, Format: FormatRaw, Size: 1000}, errdefs.ErrInvalidArgument},
		{"preallocated above free space", CreateRequest{Key: alice, Format: FormatRaw, Size: uint64(free+1<<30) &^ 511, Allocation: AllocPreallocate}, ErrNotEnoughSpace},
		{"ballooning preallocated", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, StorageBallooning: true}, errdefs.ErrInvalidArgument},
		{"unknown mkfs option", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-Z"}}, errdefs.ErrInvalidArgument},
		{"mkfs populating from the host", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-d", "/etc"}}, errdefs.ErrInvalidArgument},
		{"mkfs long option", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"--help"}}, errdefs.ErrInvalidArgument},
		{"mkfs option without its value", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-b"}}, errdefs.ErrInvalidArgument},
		{"unknown extended option", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-E", "offset=4096"}}, errdefs.ErrInvalidArgument},
		{"tune2fs force", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, Tune2fsOpts: []string{"-f"}}, errdefs.ErrInvalidArgument},
		{"a NUL in an option", CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-L", "a\x00b"}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.Create(ctx, c.req)
			if !errors.Is(err, c.want) {
				t.Errorf("Create = %v, want %v", err, c.want)
			}
			noLeftovers(t, s)
		})
	}
	// A feature mkfs does not know fails in mkfs: nothing is left.
	_, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20, Filesystem: FilesystemExt4, MkfsOpts: []string{"-O", "no_such_feature"}})
	if err == nil || StatusOf(err) != StatusFailed {
		t.Errorf("mkfs with an unknown feature = %v", err)
	}
	noLeftovers(t, s)
}

func TestStateDirCheckRefusesLinksAmongImages(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	s := newStore(t, dir)
	d := s.dir("alice", LocationRoot)
	os.MkdirAll(d.Path(), 0o700)
	if err := s.opts.Root.Check(os.Geteuid()); err != nil {
		t.Fatalf("Check of a clean tree: %v", err)
	}
	os.Symlink("/etc/shadow", d.Image("dev", statedir.DiskExtRaw))
	if err := s.opts.Root.Check(os.Geteuid()); !errors.Is(err, statedir.ErrUnsafe) {
		t.Errorf("Check with a link as an image = %v", err)
	}
}
