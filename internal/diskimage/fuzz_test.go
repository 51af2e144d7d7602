package diskimage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// qcow2Header is the header qemu-img writes for a qcow2 of size bytes in
// version 2 (72 bytes) or 3 (112, with the compression type and padding),
// 64 KiB clusters (TestQcow2HeaderAsQemuImgWritesIt checks it).
func qcow2Header(version uint32, size uint64) []byte {
	h := make([]byte, 72)
	if version >= 3 {
		h = make([]byte, 112)
	}
	be := binary.BigEndian
	copy(h, qcow2Magic)
	be.PutUint32(h[4:], version)
	be.PutUint32(h[20:], 16) // cluster_bits
	be.PutUint64(h[24:], size)
	be.PutUint32(h[36:], 1)       // l1_size
	be.PutUint64(h[40:], 0x30000) // l1_table_offset
	be.PutUint64(h[48:], 0x10000) // refcount_table_offset
	be.PutUint32(h[56:], 1)       // refcount_table_clusters
	if version >= 3 {
		be.PutUint32(h[96:], 4)    // refcount_order
		be.PutUint32(h[100:], 112) // header_length
	}
	return h
}

func TestQcow2HeaderAsQemuImgWritesIt(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skipf("needs qemu-img (Debian: qemu-utils): %v", err)
	}
	for _, c := range []struct {
		compat  string
		version uint32
	}{{"0.10", 2}, {"1.1", 3}} {
		p := filepath.Join(t.TempDir(), "h.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+c.compat, p, "64M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want := qcow2Header(c.version, 64<<20)
		if len(b) < len(want) || !bytes.Equal(b[:len(want)], want) {
			t.Errorf("v%d: qemu-img writes % x, the seed is % x", c.version, b[:min(len(b), len(want))], want)
		}
	}
}

// FuzzQcow2Header reads arbitrary bytes as the header of a qcow2 that an
// import is given. What it accepts is a qcow2 of version 2 or 3 whose
// virtual size is the header's, 1 byte to maxSize; only the first
// qcow2HeaderLen bytes (what validate reads) decide; and any header that
// names a backing file (its offset or its size) or, in version 3, an
// external data file is refused, whatever else it holds.
func FuzzQcow2Header(f *testing.F) {
	be := binary.BigEndian
	v2, v3 := qcow2Header(2, 64<<20), qcow2Header(3, 64<<20)
	with := func(h []byte, change func(h []byte)) []byte {
		h = bytes.Clone(h)
		change(h)
		return h
	}
	for _, h := range [][]byte{
		v2, v3,
		qcow2Header(3, 1<<30), qcow2Header(3, maxSize), qcow2Header(3, maxSize+1), qcow2Header(3, 0), qcow2Header(2, 512),
		qcow2Header(1, 64<<20), qcow2Header(4, 64<<20),
		append(bytes.Clone(v3), make([]byte, 4096)...),
		v3[:qcow2HeaderLen], v3[:qcow2HeaderLen-1], v3[:72], v2[:71], v2[:4], nil,
		with(v3, func(h []byte) { be.PutUint64(h[8:], 0x200); be.PutUint32(h[16:], 11) }), // backing file /etc/shadow
		with(v2, func(h []byte) { be.PutUint32(h[16:], 11) }),
		with(v3, func(h []byte) { be.PutUint64(h[72:], qcow2ExternalData) }),
		with(v3, func(h []byte) { be.PutUint64(h[72:], math.MaxUint64) }),
		with(v3, func(h []byte) { be.PutUint64(h[24:], math.MaxUint64) }),
		with(v3, func(h []byte) { copy(h, "QFI\xfa") }),
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h []byte) {
		size, err := checkQcow2Header(h)
		if err != nil {
			if size != 0 || !errors.Is(err, ErrBadImage) {
				t.Fatalf("refused with %d, %v; want 0 and ErrBadImage", size, err)
			}
		} else {
			version := be.Uint32(h[4:8])
			switch {
			case len(h) < 72 || string(h[:4]) != qcow2Magic || (version != 2 && version != 3):
				t.Fatalf("accepted %x: not a qcow2 header of version 2 or 3", h)
			case size <= 0 || size > maxSize || uint64(size) != be.Uint64(h[24:32]):
				t.Fatalf("size %d from a header saying %d", size, be.Uint64(h[24:32]))
			case be.Uint64(h[8:16]) != 0 || be.Uint32(h[16:20]) != 0:
				t.Fatalf("accepted a backing file: %x", h)
			case version == 3 && (len(h) < qcow2HeaderLen || be.Uint64(h[72:80])&qcow2ExternalData != 0):
				t.Fatalf("accepted a version 3 header cut short or with a data file: %x", h)
			}
		}
		if len(h) > qcow2HeaderLen {
			if s2, err2 := checkQcow2Header(h[:qcow2HeaderLen]); s2 != size || (err2 == nil) != (err == nil) {
				t.Fatalf("the header alone gives %d, %v; with %d bytes more %d, %v", s2, err2, len(h)-qcow2HeaderLen, size, err)
			}
		}
		refused := func(what string, change func(h []byte)) {
			if _, err := checkQcow2Header(with(h, change)); err == nil {
				t.Fatalf("accepted with %s: %x", what, with(h, change))
			}
		}
		if len(h) >= 20 {
			refused("a backing file offset", func(h []byte) { h[15] |= 1 })
			refused("a backing file name's size", func(h []byte) { h[19] |= 1 })
		}
		if len(h) >= 80 && be.Uint32(h[4:8]) == 3 {
			refused("an external data file", func(h []byte) { h[79] |= qcow2ExternalData })
		}
	})
}

// FuzzMeta reads arbitrary bytes as the metadata kept beside an image.
// What cannot be read counts as no metadata at all, never as part of it;
// what is read names a filesystem cabin makes, and written back (as
// place writes it) reads the same.
func FuzzMeta(f *testing.F) {
	for _, s := range []string{
		`{"user_chosen_size":true,"filesystem":"ext4","vm_type":4,"has_vm_type":true,"storage_ballooning":true}`,
		`{"user_chosen_size":false,"vm_type":0}`,
		`{"user_chosen_size":true,"vm_type":2,"has_vm_type":true}`,
		`{}`, `null`, `[]`, ``, `{"user_chosen_size":true,`, `{"vm_type":4294967296}`, `{"VM_TYPE":1,"Filesystem":"ext4"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMeta(b)
		if err != nil {
			if m != (meta{}) {
				t.Fatalf("unreadable (%v), yet read as %+v", err, m)
			}
			return
		}
		if m.Filesystem != "" && m.Filesystem != FilesystemExt4 {
			t.Fatalf("filesystem %q", m.Filesystem)
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := parseMeta(out); err != nil || again != m {
			t.Fatalf("%+v written as %s reads as %+v, %v", m, out, again, err)
		}
	})
}

// FuzzRecord reads arbitrary bytes as the record file of an operation,
// as Recover does at start-up. A record it takes is of that operation,
// of a kind and status cabin's operations have, at most 100%, on an
// image whose name passes the one rule for names; a partial file it
// names is a single name in an absolute directory (Recover removes it);
// and it writes back as it reads (Recover rewrites the records of
// operations it marks failed, and a record it cannot write stops it).
func FuzzRecord(f *testing.F) {
	const uuid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"
	for _, s := range []string{
		`{"uuid":"` + uuid + `","kind":"export","owner":"alice","name":"dev","status":6,"percent":40,"started":"2025-03-01T10:00:00.123456789+01:00","partial":{"dir":"/home/alice","name":"dev.img","dev":2049,"ino":1234}}`,
		`{"uuid":"` + uuid + `","kind":"import","owner":"","name":"dev","status":1,"percent":100,"digest":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","started":"2025-03-01T10:00:00Z","ended":"2025-03-01T10:01:00Z"}`,
		`{"uuid":"` + uuid + `","kind":"resize","owner":"bob","name":"vm-1","status":3,"percent":12,"reason":"cancelled","started":"2025-03-01T10:00:00Z","ended":"2025-03-01T10:00:01Z"}`,
		`{"uuid":"` + uuid + `","kind":"resize","owner":"bob","name":"vm-1","status":9,"started":"0001-01-01T00:00:00Z"}`,
		`{"uuid":"00000000-0000-4000-8000-000000000000","kind":"export"}`,
		`{"uuid":"` + uuid + `","partial":null}`, `{"uuid":"` + uuid + `","started":"9999-12-31T23:59:59.999999999-23:59"}`,
		`{"uuid":"` + uuid + `","status":-1}`, `{"uuid":1}`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	kinds := []OpKind{OpResize, OpExport, OpImport}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b, uuid)
		if err != nil {
			if !reflect.DeepEqual(r, record{}) {
				t.Fatalf("unreadable (%v), yet read as %+v", err, r)
			}
			return
		}
		switch {
		case r.UUID != uuid:
			t.Fatalf("the record of %q read as %q's", r.UUID, uuid)
		case !slices.Contains(kinds, r.Kind):
			t.Fatalf("kind %q", r.Kind)
		case r.Status <= StatusUnknown || r.Status > StatusBadImage:
			t.Fatalf("status %d", r.Status)
		case r.Percent > 100:
			t.Fatalf("%d%%", r.Percent)
		}
		if err := (Key{Owner: r.Owner, Name: r.Name}).Validate(); err != nil {
			t.Fatalf("image name: %v", err)
		}
		if p := r.Partial; p != nil && (!filepath.IsAbs(p.Dir) || p.Name == "" || p.Name == "." || p.Name == ".." || strings.Contains(p.Name, "/")) {
			t.Fatalf("partial file %q in %q", p.Name, p.Dir)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%+v cannot be written back: %v", r, err)
		}
		again, err := parseRecord(out, uuid)
		if err != nil {
			t.Fatalf("written back as %s: %v", out, err)
		}
		if out2, _ := json.Marshal(again); !bytes.Equal(out2, out) {
			t.Fatalf("written back as %s, then as %s", out, out2)
		}
	})
}

// FuzzChunkWriter writes a client's chunks into a file of the image's
// size, as an import does. steps is a sequence of 11-byte chunks: a
// byte choosing where the offset counts from (0, the end of the chunk
// before, the image's end), a signed 8-byte distance from there, and a
// 2-byte length (at most 2 KiB, and 32 chunks: what goes to the disk
// bounds the pace). A chunk is taken exactly when it starts at or after
// the end of the one before and ends inside the image; any other is
// refused as a bad image and changes nothing. The file never grows, and
// holds every chunk taken where it was put.
func FuzzChunkWriter(f *testing.F) {
	step := func(from byte, dist int64, n uint16) []byte {
		b := []byte{from}
		b = binary.BigEndian.AppendUint64(b, uint64(dist))
		return binary.BigEndian.AppendUint16(b, n)
	}
	seq := func(steps ...[]byte) []byte { return bytes.Join(steps, nil) }
	f.Add(int64(64<<20), seq(step(0, 0, 2048), step(1, 0, 2048), step(1, 1<<20, 1024), step(2, -2048, 2048)))
	f.Add(int64(64<<20), seq(step(2, -2047, 2048), step(2, 0, 1), step(2, 0, 0), step(1, -1, 1)))
	f.Add(int64(1<<20), seq(step(0, -1, 1), step(0, math.MaxInt64, 1), step(0, math.MaxInt64-100, 200), step(0, math.MinInt64, 1)))
	f.Add(int64(0), seq(step(0, 0, 0), step(0, 0, 1)))
	f.Add(int64(512), seq(step(0, 0, 512), step(1, 0, 1)))
	f.Fuzz(func(t *testing.T, size int64, steps []byte) {
		size &= 1<<40 - 1 // sparse files on any filesystem the tests run on
		if len(steps) > 32*11 {
			steps = steps[:32*11]
		}
		file, err := os.Create(filepath.Join(t.TempDir(), "image"))
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		if err := file.Truncate(size); err != nil {
			t.Fatal(err)
		}
		w := chunkWriter{f: file, size: size}
		var taken []Chunk
		var written int64
		for i := 0; i+11 <= len(steps); i += 11 {
			s := steps[i : i+11]
			var off int64
			switch s[0] % 3 {
			case 1:
				off = w.next
			case 2:
				off = size
			}
			off += int64(binary.BigEndian.Uint64(s[1:9])) // wraps, as a client's may
			data := bytes.Repeat([]byte{byte(i/11) + 1}, int(binary.BigEndian.Uint16(s[9:11])%(2<<10+1)))
			before := w
			err := w.write(Chunk{Offset: off, Data: data})
			// In range, reckoned without overflowing.
			ok := off >= before.next && off <= size && int64(len(data)) <= size-off
			switch {
			case ok && err != nil:
				t.Fatalf("chunk %d: %d bytes at %d of %d (after %d) refused: %v", i/11, len(data), off, size, before.next, err)
			case !ok && err == nil:
				t.Fatalf("chunk %d: %d bytes at %d of %d (after %d) taken", i/11, len(data), off, size, before.next)
			case !ok && (!errors.Is(err, ErrBadImage) || w != before):
				t.Fatalf("chunk %d refused with %v, writer %+v, was %+v", i/11, err, w, before)
			case ok:
				taken = append(taken, Chunk{Offset: off, Data: data})
				written += int64(len(data))
			}
		}
		st, err := file.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != size || w.written != written {
			t.Fatalf("file of %d bytes, %d written; want %d and %d", st.Size(), w.written, size, written)
		}
		for _, c := range taken {
			got := make([]byte, len(c.Data))
			if _, err := file.ReadAt(got, c.Offset); err != nil || !bytes.Equal(got, c.Data) {
				t.Fatalf("%d bytes at %d read back wrong (%v)", len(c.Data), c.Offset, err)
			}
		}
	})
}
