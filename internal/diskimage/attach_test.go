package diskimage

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// attachStore is a store on a fresh state dir, without its tools: the
// attach runs none.
func attachStore(t *testing.T) *Store {
	t.Helper()
	root, err := statedir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func attachVM(name string) resource.VM {
	return resource.VM{Name: name, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// placeImage puts an image of name in the store as Create would, with
// content.
func placeImage(t *testing.T, s *Store, name string, f Format, content []byte) string {
	t.Helper()
	d := s.dir("", LocationRoot)
	if err := os.MkdirAll(d.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	p := d.Image(name, f.ext())
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func qcow2(backing, dataFile bool) []byte {
	h := make([]byte, 4096)
	copy(h, qcow2Magic)
	binary.BigEndian.PutUint32(h[4:], 3)
	if backing {
		binary.BigEndian.PutUint64(h[8:], 512)
		binary.BigEndian.PutUint32(h[16:], 11)
		copy(h[512:], "/etc/shadow")
	}
	binary.BigEndian.PutUint64(h[24:], 1<<20)
	if dataFile {
		binary.BigEndian.PutUint64(h[72:], qcow2ExternalData)
	}
	return h
}

// The VM's own image is attached first, writable, as the stateful disk,
// and its hold says so; the file is let go once the hypervisor has it.
func TestResourceAttachesOwnImage(t *testing.T) {
	s := attachStore(t)
	path := placeImage(t, s, "vm1", FormatRaw, make([]byte, 1<<20))
	other, _ := os.Open(os.DevNull)
	defer other.Close()
	cfg := hypervisor.Config{Disks: []hypervisor.Disk{{ID: "disk1", File: other, Format: hypervisor.DiskRaw}}}
	h, err := Resource{Store: s}.Prepare(context.Background(), attachVM("vm1"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Disks) != 2 || cfg.Disks[0].ID != StatefulDiskID || cfg.Disks[0].Path != path ||
		cfg.Disks[0].ReadOnly || cfg.Disks[0].Format != hypervisor.DiskRaw || cfg.Disks[1].ID != "disk1" {
		t.Fatalf("disks %+v", cfg.Disks)
	}
	file := cfg.Disks[0].File
	if _, err := file.WriteAt([]byte("x"), 0); err != nil {
		t.Errorf("the stateful disk is not open for writing: %v", err)
	}
	sd, ok := h.(interface{ StatefulDisk() (string, string) })
	if id, p := sd.StatefulDisk(); !ok || id != StatefulDiskID || p != path {
		t.Errorf("StatefulDisk() = %q, %q", id, p)
	}
	if !s.Held(Key{Name: "vm1"}) {
		t.Error("the image is not held")
	}
	h.(resource.Starter).Start(context.Background(), nil)
	if _, err := file.Stat(); err == nil {
		t.Error("the image's file is still open after the hypervisor started")
	}
	h.Release(context.Background())
	if s.Held(Key{Name: "vm1"}) {
		t.Error("the image is still held after release")
	}
	// Adopted, the hold still names the disk.
	h2, err := Resource{Store: s}.Adopt(context.Background(), attachVM("vm1"), h.State())
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Release(context.Background())
	if id, _ := h2.(interface{ StatefulDisk() (string, string) }).StatefulDisk(); id != StatefulDiskID {
		t.Errorf("adopted hold's disk %q", id)
	}
}

// Without an image, nothing is attached, and the name is held all the
// same.
func TestResourceWithoutImage(t *testing.T) {
	s := attachStore(t)
	var cfg hypervisor.Config
	h, err := Resource{Store: s}.Prepare(context.Background(), attachVM("vm1"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(context.Background())
	if len(cfg.Disks) != 0 || h.State() != nil {
		t.Errorf("disks %+v, state %s", cfg.Disks, h.State())
	}
}

// A qcow2 naming a backing or data file is refused before QEMU sees it,
// and so is the image attached twice; the refused start holds nothing.
func TestResourceRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, want string
		content    []byte
		twice      bool
	}{
		{"backing file", "backing file", qcow2(true, false), false},
		{"data file", "data file", qcow2(false, true), false},
		{"not a qcow2", "magic", make([]byte, 4096), false},
		{"attached twice", "same disk twice", qcow2(false, false), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := attachStore(t)
			path := placeImage(t, s, "vm1", FormatQcow2, tt.content)
			var cfg hypervisor.Config
			if tt.twice {
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				cfg.Disks = []hypervisor.Disk{{ID: "disk1", Path: path, File: f, Format: hypervisor.DiskQcow2}}
			}
			_, err := Resource{Store: s}.Prepare(context.Background(), attachVM("vm1"), &cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error saying %q", err, tt.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%v is not invalid argument", err)
			}
			if s.Held(Key{Name: "vm1"}) {
				t.Error("a refused image is held")
			}
		})
	}
}

func TestImageFormat(t *testing.T) {
	root, _ := statedir.New(t.TempDir())
	d := root.DiskDir(statedir.DiskOwnerID("u"), statedir.DiskLocationRoot)
	for path, want := range map[string]Format{
		d.Image("vm1", statedir.DiskExtRaw):   FormatRaw,
		d.Image("vm1", statedir.DiskExtQcow2): FormatQcow2,
		filepath.Join(d.Path(), ".tmp.img"):   0,
		filepath.Join(d.Path(), "a/b.img"):    0,
		d.Image("vm1", ".meta"):               0,
		"/home/u/vm1.img":                     0,
	} {
		got, ok := ImageFormat(root, "u", path)
		if got != want || ok != (want != 0) {
			t.Errorf("ImageFormat(%q) = %v, %v; want %v", path, got, ok, want)
		}
	}
	if _, ok := ImageFormat(root, "other", d.Image("vm1", statedir.DiskExtRaw)); ok {
		t.Error("another owner's image counts as the caller's")
	}
}

// FuzzImageFormat: a path is one of the owner's images only when the
// store would name that image so.
func FuzzImageFormat(f *testing.F) {
	root, _ := statedir.New("/var/lib/cabin")
	d := root.DiskDir(statedir.DiskOwnerID("u"), statedir.DiskLocationRoot)
	for _, p := range []string{d.Image("vm1", ".img"), d.Image("vm1", ".qcow2"), d.Path() + "/../x.img", d.Path() + "/.x.img", "/x.img", d.Path() + "/a/b.qcow2"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		format, ok := ImageFormat(root, "u", p)
		if !ok {
			return
		}
		name := strings.TrimSuffix(filepath.Base(p), format.ext())
		if (Key{Name: name}).Validate() != nil || d.Image(name, format.ext()) != p || filepath.Clean(p) != p {
			t.Fatalf("%q taken for image %q (%v)", p, name, format)
		}
	})
}

// The owner's other images a start attaches are held with the VM's own:
// none starts under an operation, and they are let go with the VM.
func TestResourceHoldsAttachedImages(t *testing.T) {
	s := attachStore(t)
	data := placeImage(t, s, "data", FormatRaw, make([]byte, 1<<20))
	f, err := os.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := hypervisor.Config{Disks: []hypervisor.Disk{{ID: "disk1", Path: data, File: f, Format: hypervisor.DiskRaw}}}
	h, err := Resource{Store: s}.Prepare(context.Background(), attachVM("vm1"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Held(Key{Name: "data"}) {
		t.Error("the attached image is not held")
	}
	state := h.State()
	h.Release(context.Background())
	if s.Held(Key{Name: "data"}) {
		t.Error("the attached image is held after release")
	}
	// Adopted from the record, it is held again.
	h, err = Resource{Store: s}.Adopt(context.Background(), attachVM("vm1"), state)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Held(Key{Name: "data"}) {
		t.Error("the attached image is not held after adoption")
	}
	h.Release(context.Background())
	// Under an operation, the start fails and holds nothing.
	op, _, err := s.begin(s.ctx, OpResize, Key{Name: "data"}, func(bool) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer op.finish(nil)
	if _, err := (Resource{Store: s}).Prepare(context.Background(), attachVM("vm1"), &cfg); !errors.Is(err, ErrBusy) {
		t.Errorf("start with an image under an operation: %v, want busy", err)
	}
	if s.Held(Key{Name: "vm1"}) {
		t.Error("a refused start holds its own image")
	}
}
