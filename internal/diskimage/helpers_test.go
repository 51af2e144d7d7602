package diskimage

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/statedir"
)

// needTools skips t unless qemu-img and e2fsprogs are installed.
func needTools(t testing.TB) {
	t.Helper()
	for _, p := range []string{"qemu-img", "mkfs.ext4", "resize2fs", "e2fsck", "dumpe2fs", "tune2fs"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (Debian: qemu-utils, e2fsprogs): %v", p, err)
		}
	}
}

func newStore(t testing.TB, dir string) *Store {
	t.Helper()
	needTools(t)
	root, err := statedir.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Recover(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// leftovers lists every file below the disks dir but the operations'
// records, and the images and metadata named in keep.
func leftovers(t testing.TB, s *Store, keep ...string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(s.opts.Root.DisksDir(), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Dir(p) == s.opts.Root.DiskOpsDir() {
			return nil
		}
		for _, k := range keep {
			if strings.HasPrefix(filepath.Base(p), k+".") {
				return nil
			}
		}
		out = append(out, p)
		return nil
	})
	return out
}

func noLeftovers(t testing.TB, s *Store, keep ...string) {
	t.Helper()
	if l := leftovers(t, s, keep...); len(l) > 0 {
		t.Errorf("left behind: %v", l)
	}
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

var alice = Key{Owner: "alice", Name: "dev"}

// memSink keeps an export in memory.
type memSink struct {
	format     Format
	size, data int64
	chunks     []Chunk
	onWrite    func()
}

func (m *memSink) Begin(f Format, size, data int64) error {
	m.format, m.size, m.data = f, size, data
	return nil
}

func (m *memSink) Write(c Chunk) error {
	m.chunks = append(m.chunks, Chunk{Offset: c.Offset, Data: bytes.Clone(c.Data)})
	if m.onWrite != nil {
		m.onWrite()
	}
	return nil
}

// sliceSource plays chunks back.
type sliceSource struct {
	chunks []Chunk
	err    error
}

func (s *sliceSource) Next() (Chunk, error) {
	if len(s.chunks) == 0 {
		if s.err != nil {
			return Chunk{}, s.err
		}
		return Chunk{}, io.EOF
	}
	c := s.chunks[0]
	s.chunks = s.chunks[1:]
	return c, nil
}

// writeData writes n random bytes at off into the raw image at path.
func writeData(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	rand.Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func fileDigest(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}
