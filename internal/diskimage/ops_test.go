package diskimage

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestResize(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	wait := func(op *Op, err error) Progress {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		<-op.Done()
		return op.Progress()
	}
	res, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 64 << 20, Allocation: AllocSparse, Filesystem: FilesystemExt4})
	if err != nil {
		t.Fatal(err)
	}
	if p := wait(s.Resize(ctx, alice, 128<<20)); p.Status != StatusResized {
		t.Fatalf("grow = %+v", p)
	}
	if sz, _ := virtualSize(res.Path, FormatRaw); sz != 128<<20 {
		t.Errorf("size after growing %d", sz)
	}
	min, err := s.minFsSize(ctx, res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if p := wait(s.Resize(ctx, alice, uint64(min/2)&^511)); p.Status != StatusFailed || !strings.Contains(p.Reason, "minimum") {
		t.Errorf("shrink below the minimum = %+v", p)
	}
	if sz, _ := virtualSize(res.Path, FormatRaw); sz != 128<<20 {
		t.Errorf("size after a refused shrink %d", sz)
	}
	if p := wait(s.Resize(ctx, alice, 32<<20)); p.Status != StatusResized {
		t.Fatalf("shrink = %+v", p)
	}
	if out, err := exec.Command("e2fsck", "-f", "-n", res.Path).CombinedOutput(); err != nil {
		t.Errorf("the filesystem after shrinking: %v\n%s", err, out)
	}
	// Without a filesystem, in qcow2.
	q := Key{Owner: "alice", Name: "q"}
	if _, err := s.Create(ctx, CreateRequest{Key: q, Format: FormatQcow2, Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if p := wait(s.Resize(ctx, q, 1<<30)); p.Status != StatusResized {
		t.Fatalf("qcow2 grow = %+v", p)
	}
	if _, err := s.Resize(ctx, q, 1000); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("resize to 1000 bytes = %v", err)
	}
	if p := wait(s.Resize(ctx, Key{Owner: "alice", Name: "none"}, 1<<20)); p.Status != StatusDoesNotExist {
		t.Errorf("resize of no image = %+v", p)
	}
}

func TestHoldsAndBusy(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	if _, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	release, err := s.Hold(alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Export(ctx, ExportRequest{Key: alice}, &memSink{}, nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("export of a held image without force = %v", err)
	}
	if _, err := s.Export(ctx, ExportRequest{Key: alice, Force: true}, &memSink{}, nil); err != nil {
		t.Errorf("forced export of a held image = %v", err)
	}
	if _, err := s.Resize(ctx, alice, 2<<20); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("resize of a held image = %v", err)
	}
	stopped := false
	s.StopVM = func(_ context.Context, owner, name string) error {
		stopped = owner == "alice" && name == "dev"
		release()
		return nil
	}
	if existed, err := s.Destroy(ctx, alice); err != nil || !existed || !stopped {
		t.Errorf("Destroy = %v, %v; VM stopped: %v", existed, err, stopped)
	}
	if existed, err := s.Destroy(ctx, alice); err != nil || existed {
		t.Errorf("second Destroy = %v, %v", existed, err)
	}
	// A VM does not start under an operation.
	sink := &memSink{}
	if _, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	writeData(t, s.dir("alice", LocationRoot).Image("dev", ".img"), 0, 4096)
	sink.onWrite = func() {
		if _, err := s.Hold(alice); !errors.Is(err, ErrBusy) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("Hold during an export = %v", err)
		}
		if _, err := s.Export(ctx, ExportRequest{Key: alice}, &memSink{}, nil); !errors.Is(err, ErrBusy) {
			t.Errorf("a second export at once = %v", err)
		}
	}
	if _, err := s.Export(ctx, ExportRequest{Key: alice}, sink, nil); err != nil {
		t.Fatal(err)
	}
	if len(sink.chunks) == 0 {
		t.Error("nothing exported")
	}
	if _, err := s.Hold(alice); err != nil {
		t.Errorf("Hold after the export = %v", err)
	}
}

// TestRecover plays a cabind that died mid-operation.
func TestRecover(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir)
	root := s.opts.Root
	d := s.dir("alice", LocationRoot)
	os.MkdirAll(d.Path(), 0o700)
	uuid := newUUID()
	tmp := d.Temp(uuid)
	os.WriteFile(tmp, []byte("half an image"), 0o600)
	partialDir := t.TempDir()
	partial := filepath.Join(partialDir, "export.img")
	os.WriteFile(partial, []byte("half an export"), 0o600)
	var st syscall.Stat_t
	syscall.Stat(partial, &st)
	b, _ := json.Marshal(record{UUID: uuid, Kind: OpExport, Owner: "alice", Name: "dev", Status: StatusInProgress, Percent: 40,
		Started: time.Now(), Partial: &partialFile{Dir: partialDir, Name: "export.img", Dev: st.Dev, Ino: st.Ino}})
	os.WriteFile(root.DiskOp(uuid), b, 0o600)
	// A file of the same name that is not the one the export made stays.
	// Its record names the first export's inode, which is surely not its
	// own (a guessed number such as st.Ino+1 may be, on tmpfs).
	other := filepath.Join(partialDir, "other.img")
	os.WriteFile(other, nil, 0o600)
	b2, _ := json.Marshal(record{UUID: newUUID(), Kind: OpExport, Owner: "alice", Name: "dev", Status: StatusInProgress,
		Started: time.Now(), Partial: &partialFile{Dir: partialDir, Name: "other.img", Dev: st.Dev, Ino: st.Ino}})
	var r2 record
	json.Unmarshal(b2, &r2)
	os.WriteFile(root.DiskOp(r2.UUID), b2, 0o600)

	s2 := newStore(t, dir)
	if _, err := os.Lstat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary left: %v", err)
	}
	if _, err := os.Lstat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial export left: %v", err)
	}
	if _, err := os.Lstat(other); err != nil {
		t.Errorf("another file removed: %v", err)
	}
	op, err := s2.Lookup(uuid, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := op.Progress(); p.Status != StatusFailed || !strings.Contains(p.Reason, "cabind stopped") {
		t.Errorf("operation after the restart = %+v", p)
	}
	if _, err := s2.Lookup(uuid, func(owner string) bool { return owner == "bob" }); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another owner's lookup = %v", err)
	}
	if _, err := s2.Lookup("../../etc/passwd", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("lookup of a path = %v", err)
	}
}
