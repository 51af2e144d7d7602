package kata

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzPCIPath: a storage's or device's source read as a PCI path is
// slots up to 0x1f, at most maxPCIDepth of them, and reads back the same.
func FuzzPCIPath(f *testing.F) {
	for _, s := range []string{"02", "02/03", "1f/00", "", "/", "20", "../vda", "0a/0b/0c/0d/0e/0f/10/11/12"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		slots, err := parsePCIPath("source", s)
		if err != nil {
			return
		}
		if len(slots) == 0 || len(slots) > maxPCIDepth || checkSlots("PCIPath", slots) != nil {
			t.Fatalf("%q: accepted %v", s, slots)
		}
		again, err := parsePCIPath("source", formatSlots(slots))
		if err != nil || len(again) != len(slots) {
			t.Fatalf("%q: %v reads back as %v, %v", s, slots, again, err)
		}
		if strings.Contains(diskName(slots[0]), "/") {
			t.Fatalf("disk name %q", diskName(slots[0]))
		}
	})
}

// FuzzSwapHeader: the first page of a disk, whatever it holds, reads as a
// swap area only with the magic, version 1 and room for one; a header
// made here always reads back.
func FuzzSwapHeader(f *testing.F) {
	var uuid [16]byte
	hdr, _ := swapHeader(1<<20, 4096, uuid)
	f.Add(hdr)
	f.Add(make([]byte, 4096))
	f.Add([]byte(swapMagic))
	f.Fuzz(func(t *testing.T, page []byte) {
		last, ok := parseSwapHeader(page)
		if ok && (last < minSwapPages-1 || !strings.HasSuffix(string(page), swapMagic)) {
			t.Fatalf("accepted a header with last page %d", last)
		}
		size := uint64(len(page)) * 4096
		if h, err := swapHeader(size, 4096, uuid); err == nil {
			if l, ok := parseSwapHeader(h); !ok || uint64(l) != size/4096-1 {
				t.Fatalf("a header for %d bytes reads back as %d, %v", size, l, ok)
			}
		}
	})
}

// FuzzCopyRequest: a CopyFile request accepted by its checks has an
// absolute clean path with no NUL, sizes that add up, and a kind it
// knows.
func FuzzCopyRequest(f *testing.F) {
	f.Add("/run/kata-containers/shared/containers/x", int64(3), uint32(0o644), int64(0), []byte("abc"))
	f.Add("/run/x/../y", int64(0), uint32(unix.S_IFLNK|0o777), int64(0), []byte("/etc"))
	f.Add("/run/x", int64(10), uint32(unix.S_IFREG), int64(8), []byte("abc"))
	f.Fuzz(func(t *testing.T, path string, size int64, mode uint32, off int64, data []byte) {
		r := CopyRequest{Path: path, FileSize: size, FileMode: mode, Offset: off, Data: data}
		kind, err := checkCopy(r)
		if err != nil {
			return
		}
		if !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.IndexByte(path, 0) >= 0 {
			t.Fatalf("accepted path %q", path)
		}
		switch kind {
		case unix.S_IFREG:
			if size < 0 || off < 0 || off+int64(len(data)) > size {
				t.Fatalf("accepted %d bytes at %d of %d", len(data), off, size)
			}
		case unix.S_IFLNK:
			if len(data) == 0 || len(data) > maxSymlink {
				t.Fatalf("accepted a symlink to %d bytes", len(data))
			}
		case unix.S_IFDIR:
		default:
			t.Fatalf("kind %o", kind)
		}
	})
}
