package diskimage

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Sparse copies: only the data of an image travels. Its data regions are
// found with SEEK_DATA/SEEK_HOLE, and within them every block of zeros is
// left out too (as `qemu-img convert -S 4k` does), so a hole stays a hole
// and zeros become one. The receiver writes each chunk at its offset into
// a file first truncated to the image's size.

// zeroBlock is the granularity at which zeros are left out.
const zeroBlock = 4096

// chunkSize is the most one chunk carries: a gRPC message stays well
// below the 4 MiB clients take by default.
const chunkSize = 1 << 20

// extent is a region of a file holding data.
type extent struct{ off, len int64 }

// dataExtents lists the data regions of f, of size bytes. A filesystem
// that cannot tell holes reports the whole file as data.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	var out []extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, size)
		if hole > data {
			out = append(out, extent{data, hole - data})
		}
		off = hole
	}
	return out, nil
}

func extentBytes(es []extent) int64 {
	var n int64
	for _, e := range es {
		n += e.len
	}
	return n
}

// Chunk is a piece of an image's data at its offset.
type Chunk struct {
	Offset int64
	Data   []byte
}

// digester hashes an image's whole logical content, holes as zeros,
// from the chunks that travel in order.
type digester struct {
	h   hash.Hash
	pos int64
}

var zeros = make([]byte, chunkSize)

func newDigester(on bool) *digester {
	if !on {
		return nil
	}
	return &digester{h: sha256.New()}
}

// add hashes zeros up to off, then p.
func (d *digester) add(off int64, p []byte) {
	if d == nil {
		return
	}
	d.zeroTo(off)
	d.h.Write(p)
	d.pos = off + int64(len(p))
}

func (d *digester) zeroTo(off int64) {
	for d.pos < off {
		n := min(off-d.pos, int64(len(zeros)))
		d.h.Write(zeros[:n])
		d.pos += n
	}
}

// sum ends the digest at size and returns it in hex.
func (d *digester) sum(size int64) string {
	if d == nil {
		return ""
	}
	d.zeroTo(size)
	return fmt.Sprintf("%x", d.h.Sum(nil))
}

// readChunks reads the data regions es of src in order and hands each
// run of blocks that are not all zeros to emit, in order of offset, at
// most chunkSize at a time. done is told the bytes of data regions read
// so far.
func readChunks(ctx context.Context, src *os.File, es []extent, emit func(Chunk) error, done func(read int64)) error {
	var read int64
	buf := make([]byte, chunkSize)
	for _, e := range es {
		for off := e.off; off < e.off+e.len; {
			if err := ctx.Err(); err != nil {
				return ErrCancelled
			}
			n := min(int64(len(buf)), e.off+e.len-off)
			m, err := src.ReadAt(buf[:n], off)
			if err != nil && !(errors.Is(err, io.EOF) && int64(m) == n) {
				return fmt.Errorf("read image: %w", err)
			}
			if err := emitNonZero(buf[:n], off, emit); err != nil {
				return err
			}
			off += n
			read += n
			if done != nil {
				done(read)
			}
		}
	}
	return nil
}

// emitNonZero hands emit the runs of p (at offset off) that are not
// whole zero blocks.
func emitNonZero(p []byte, off int64, emit func(Chunk) error) error {
	start := -1
	for i := 0; i < len(p); i += zeroBlock {
		end := min(i+zeroBlock, len(p))
		if isZero(p[i:end]) {
			if start >= 0 {
				if err := emit(Chunk{Offset: off + int64(start), Data: p[start:i]}); err != nil {
					return err
				}
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		return emit(Chunk{Offset: off + int64(start), Data: p[start:]})
	}
	return nil
}

func isZero(p []byte) bool {
	// Compare against a zero slice: the runtime's memequal is vectorised.
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if string(p[:n]) != string(zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// chunkWriter writes chunks into a file truncated to the image's size,
// checking that they come in order and inside the image.
type chunkWriter struct {
	f    *os.File
	size int64
	next int64
	// written counts the data bytes written.
	written int64
}

func (w *chunkWriter) write(c Chunk) error {
	switch {
	case c.Offset < w.next:
		return badImage("a chunk at offset %d, before the end of the one before (%d)", c.Offset, w.next)
	case c.Offset > w.size-int64(len(c.Data)): // c.Offset+len may overflow
		return badImage("a chunk at offset %d of %d bytes ends past the image's size of %d", c.Offset, len(c.Data), w.size)
	}
	if _, err := w.f.WriteAt(c.Data, c.Offset); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return notEnoughSpace("the disk filled up while writing: %v", err)
		}
		return fmt.Errorf("write image: %w", err)
	}
	w.next = c.Offset + int64(len(c.Data))
	w.written += int64(len(c.Data))
	return nil
}

// freeSpace is what an unprivileged writer may still use of the
// filesystem holding path (root could use the reserve too, but leaves it).
func freeSpace(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func freeSpaceFd(fd int) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// spaceMargin is kept free besides what an operation needs: metadata,
// the filesystem's own rounding.
const spaceMargin = 1 << 20

// ReadSparse reads the file f of size bytes as an export does: its data
// regions in order, each run of blocks that are not all zeros handed to
// emit (at most 1 MiB at a time; emit must not keep Data). progress, when
// set, is told the bytes of data regions read so far and their total. A
// client sending an image to Import reads it so.
func ReadSparse(ctx context.Context, f *os.File, size int64, emit func(Chunk) error, progress func(read, total int64)) error {
	es, err := dataExtents(f, size)
	if err != nil {
		return err
	}
	total := extentBytes(es)
	return readChunks(ctx, f, es, emit, func(read int64) {
		if progress != nil {
			progress(read, total)
		}
	})
}

// DataBytes is how many bytes of data regions the file f of size bytes
// holds: what an import of it declares.
func DataBytes(f *os.File, size int64) (int64, error) {
	es, err := dataExtents(f, size)
	if err != nil {
		return 0, err
	}
	return extentBytes(es), nil
}
