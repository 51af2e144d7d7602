package diskimage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestExportImportRoundTrip(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	res, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 256 << 20, Allocation: AllocSparse})
	if err != nil {
		t.Fatal(err)
	}
	writeData(t, res.Path, 0, 3<<20)
	writeData(t, res.Path, 100<<20, 1<<20)
	// Zeros written are data to the filesystem, holes once exported.
	f, _ := os.OpenFile(res.Path, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, 4<<20), 50<<20)
	f.Close()
	want := fileDigest(t, res.Path)

	sink := &memSink{}
	var op *Op
	out, err := s.Export(ctx, ExportRequest{Key: alice, Digest: true}, sink, func(o *Op) { op = o })
	if err != nil {
		t.Fatal(err)
	}
	if out.Digest != want || out.Size != 256<<20 || out.Format != FormatRaw {
		t.Errorf("export = %+v, want digest %s", out, want)
	}
	if p := op.Progress(); p.Status != StatusCreated || p.Percent != 100 || p.Digest != want {
		t.Errorf("export's operation = %+v", p)
	}
	var sent int64
	for _, c := range sink.chunks {
		sent += int64(len(c.Data))
	}
	if sent != 4<<20 {
		t.Errorf("sent %d bytes of data, want %d (zeros left out)", sent, 4<<20)
	}

	bob := Key{Owner: "bob", Name: "copy"}
	p, err := s.Import(ctx, ImportRequest{Key: bob, Format: FormatRaw, Size: sink.size, Data: sink.data, Digest: true},
		&sliceSource{chunks: sink.chunks}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != StatusCreated || p.Digest != want {
		t.Errorf("import = %+v, want digest %s", p, want)
	}
	f2, ok, _ := s.find(bob)
	if !ok {
		t.Fatal("imported image not found")
	}
	if got := fileDigest(t, f2.path); got != want {
		t.Errorf("imported bytes differ: %s, want %s", got, want)
	}
	if a := allocated(t, f2.path); a > 5<<20 {
		t.Errorf("imported image allocates %d bytes; want its 4 MiB of data only", a)
	}
	// Into a file on the host, on a caller's behalf.
	dst := filepath.Join(t.TempDir(), "out.img")
	op, err = s.ExportToFile(ctx, ExportRequest{Key: bob, Digest: true}, nil, dst)
	if err != nil {
		t.Fatal(err)
	}
	<-op.Done()
	if p := op.Progress(); p.Status != StatusCreated || p.Digest != want {
		t.Fatalf("export to a file = %+v", p)
	}
	if fileDigest(t, dst) != want || allocated(t, dst) > 5<<20 {
		t.Errorf("exported file: digest %s, %d bytes allocated", fileDigest(t, dst), allocated(t, dst))
	}
	// And back from one.
	op, err = s.ImportFromFile(ctx, ImportRequest{Key: Key{Owner: "bob", Name: "again"}, Format: FormatRaw}, nil, dst)
	if err != nil {
		t.Fatal(err)
	}
	<-op.Done()
	if p := op.Progress(); p.Status != StatusCreated {
		t.Fatalf("import from a file = %+v", p)
	}
	// An export never replaces a file.
	if _, err := s.ExportToFile(ctx, ExportRequest{Key: bob}, nil, dst); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("export over an existing file = %v", err)
	}
	l, err := s.List(ctx, "bob", nil, "")
	if err != nil || len(l.Images) != 2 || l.Images[0].Name != "again" || l.Images[1].Name != "copy" || l.Images[1].Size != 256<<20 {
		t.Errorf("List = %+v, %v", l, err)
	}
	noLeftovers(t, s, "dev", "copy", "again")
}

func TestQcow2RoundTrip(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	if _, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatQcow2, Size: 1 << 30, Filesystem: FilesystemExt4}); err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	out, err := s.Export(ctx, ExportRequest{Key: alice, Digest: true}, sink, nil)
	if err != nil || sink.format != FormatQcow2 {
		t.Fatalf("export = %+v, %v", out, err)
	}
	p, err := s.Import(ctx, ImportRequest{Key: Key{Owner: "alice", Name: "b"}, Format: FormatQcow2, Size: sink.size, Data: sink.data, Digest: true},
		&sliceSource{chunks: sink.chunks}, nil)
	if err != nil || p.Digest != out.Digest {
		t.Fatalf("import = %+v, %v; want digest %s", p, err, out.Digest)
	}
}

// qcow2With makes a qcow2 file in dir with qemu-img itself, backed by
// backing when it is not empty.
func qcow2With(t *testing.T, dir, backing string) string {
	t.Helper()
	p := filepath.Join(dir, "in.qcow2")
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-u", "-b", backing, "-F", "raw")
	}
	if out, err := exec.Command("qemu-img", append(args, p, "64M")...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return p
}

// chunksOf reads a file as an import's chunks, all of it as data.
func chunksOf(t *testing.T, path string) ([]Chunk, int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cs []Chunk
	for off := 0; off < len(b); off += chunkSize {
		cs = append(cs, Chunk{Offset: int64(off), Data: b[off:min(off+chunkSize, len(b))]})
	}
	return cs, int64(len(b))
}

func TestImportBadImages(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	src := t.TempDir()
	shadow := qcow2With(t, t.TempDir(), "/etc/shadow")
	good := qcow2With(t, t.TempDir(), "")
	truncated := filepath.Join(src, "truncated.qcow2")
	if b, err := os.ReadFile(good); err == nil {
		os.WriteFile(truncated, b[:100], 0o600)
	}
	// A qcow2 that maps a cluster past the end of its file.
	cut := filepath.Join(src, "cut.qcow2")
	exec.Command("cp", good, cut).Run()
	exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", cut).Run()
	if st, err := os.Stat(cut); err == nil {
		os.Truncate(cut, st.Size()-512<<10)
	}
	text := filepath.Join(src, "notes.txt")
	os.WriteFile(text, bytes.Repeat([]byte("not an image\n"), 1000), 0o600)
	odd := filepath.Join(src, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o600)
	// A qcow2 v3 header claiming an external data file.
	dataFile := filepath.Join(src, "datafile.qcow2")
	if b, err := os.ReadFile(good); err == nil {
		binary.BigEndian.PutUint64(b[72:80], binary.BigEndian.Uint64(b[72:80])|qcow2ExternalData)
		os.WriteFile(dataFile, b, 0o600)
	}
	for _, c := range []struct {
		name, path string
		format     Format
	}{
		{"backing file /etc/shadow", shadow, FormatQcow2},
		{"truncated qcow2", truncated, FormatQcow2},
		{"qcow2 with its clusters cut off", cut, FormatQcow2},
		{"not an image", text, FormatQcow2},
		{"raw not a multiple of 512", odd, FormatRaw},
		{"external data file", dataFile, FormatQcow2},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := Key{Owner: "alice", Name: "bad"}
			// On the stream.
			chunks, size := chunksOf(t, c.path)
			_, err := s.Import(ctx, ImportRequest{Key: key, Format: c.format, Size: size, Data: size}, &sliceSource{chunks: chunks}, nil)
			if !errors.Is(err, ErrBadImage) {
				t.Errorf("stream import = %v, want ErrBadImage", err)
			}
			// From a file.
			op, err := s.ImportFromFile(ctx, ImportRequest{Key: key, Format: c.format}, nil, c.path)
			if err == nil {
				<-op.Done()
				if p := op.Progress(); p.Status != StatusBadImage {
					t.Errorf("file import ended %+v, want BAD_IMAGE", p)
				}
			} else if !errors.Is(err, ErrBadImage) {
				t.Errorf("file import = %v, want ErrBadImage", err)
			}
			noLeftovers(t, s)
		})
	}
}

// TestImportDiskFull fills a small tmpfs while importing: the import
// fails with ErrNotEnoughSpace, leaves no file and gives the space back.
func TestImportDiskFull(t *testing.T) {
	needTools(t)
	if os.Geteuid() != 0 {
		t.Skip("mounts a tmpfs: needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	s := newStore(t, dir)
	before, _ := freeSpace(dir)
	// The client says 4 MiB of data, then sends 32.
	var chunks []Chunk
	for off := int64(0); off < 32<<20; off += chunkSize {
		b := make([]byte, chunkSize)
		rand.Read(b)
		chunks = append(chunks, Chunk{Offset: off, Data: b})
	}
	p, err := s.Import(t.Context(), ImportRequest{Key: alice, Format: FormatRaw, Size: 64 << 20, Data: 4 << 20}, &sliceSource{chunks: chunks}, nil)
	if !errors.Is(err, ErrNotEnoughSpace) || p.Status != StatusNotEnoughSpace {
		t.Errorf("import = %+v, %v; want NOT_ENOUGH_SPACE", p, err)
	}
	noLeftovers(t, s)
	// What stays is the operation's record and the owner's directories.
	if after, _ := freeSpace(dir); after < before-64<<10 {
		t.Errorf("free space %d after, %d before", after, before)
	}
	// Saying so up front is refused before a byte is written.
	_, err = s.Import(t.Context(), ImportRequest{Key: alice, Format: FormatRaw, Size: 64 << 20, Data: 32 << 20}, &sliceSource{chunks: chunks}, nil)
	if !errors.Is(err, ErrNotEnoughSpace) {
		t.Errorf("import of more than the free space = %v", err)
	}
	noLeftovers(t, s)
}

func TestCancelExport(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	res, err := s.Create(ctx, CreateRequest{Key: alice, Format: FormatRaw, Size: 128 << 20, Allocation: AllocSparse})
	if err != nil {
		t.Fatal(err)
	}
	writeData(t, res.Path, 0, 64<<20)
	t.Run("to a file", func(t *testing.T) {
		progress, unsubscribe := s.Subscribe()
		defer unsubscribe()
		dst := filepath.Join(t.TempDir(), "out.img")
		op, err := s.ExportToFile(ctx, ExportRequest{Key: alice, Digest: true}, nil, dst)
		if err != nil {
			t.Fatal(err)
		}
		for p := range progress {
			if p.UUID == op.UUID() && p.Percent > 0 {
				break
			}
		}
		if err := op.Cancel(ctx); err != nil {
			t.Fatalf("Cancel: %v (the export ended first: %+v)", err, op.Progress())
		}
		if p := op.Progress(); p.Status != StatusFailed || p.Reason != "cancelled" {
			t.Errorf("cancelled export = %+v", p)
		}
		if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the partial export is there: %v", err)
		}
		if err := op.Cancel(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("second Cancel = %v", err)
		}
	})
	t.Run("streamed", func(t *testing.T) {
		var op *Op
		sink := &memSink{}
		sink.onWrite = func() {
			if len(sink.chunks) == 2 {
				go op.Cancel(ctx)
				<-op.Progress().doneOr(op)
			}
		}
		_, err := s.Export(ctx, ExportRequest{Key: alice}, sink, func(o *Op) { op = o })
		if !errors.Is(err, ErrCancelled) || op.Progress().Reason != "cancelled" {
			t.Errorf("export = %v, %+v", err, op.Progress())
		}
	})
	// Both freed the image.
	if s.Busy(alice) {
		t.Error("image still busy")
	}
}

// doneOr waits until op's context ends (the cancel has been asked for).
func (Progress) doneOr(op *Op) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for {
			op.mu.Lock()
			c := op.cancelled
			op.mu.Unlock()
			if c {
				close(ch)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return ch
}

func TestCreateHostFileForAUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("acts for another uid: needs root")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	user := &caller.Caller{UID: 4242, GIDs: []uint32{4242}}
	if _, _, err := createHostFile("path", filepath.Join(dir, "x"), user); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("create in a directory the user may not write = %v", err)
	}
	own := filepath.Join(dir, "own")
	os.Mkdir(own, 0o700)
	os.Chown(own, 4242, 4242)
	f, p, err := createHostFile("path", filepath.Join(own, "x"), user)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, _ := os.Stat(filepath.Join(own, "x"))
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 4242 || sys.Gid != 4242 {
		t.Errorf("file owned by %d:%d", sys.Uid, sys.Gid)
	}
	if err := removePartial(p); err != nil {
		t.Error(err)
	}
	// A link in the path is not followed into where the user may not go.
	os.Symlink("/root", filepath.Join(own, "l"))
	if _, _, err := createHostFile("path", filepath.Join(own, "l", "x"), user); err == nil {
		t.Error("created a file through a link into /root")
	}
}
