package guestimage

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// File type bits of a cpio mode (the same as st_mode's).
const (
	cpioTypeDir  = 0o040000
	cpioTypeChar = 0o020000
	cpioTypeReg  = 0o100000
	cpioTypeLink = 0o120000
)

const (
	cpioMagic   = "070701"
	cpioTrailer = "TRAILER!!!"
)

// cpioWriter writes a newc ("070701") archive, the only format the kernel
// unpacks as an initramfs. Output depends only on what is added and in which
// order: mtimes and owners are zero and inode numbers count up, so the same
// inputs give the same bytes (and the same cache key means the same file).
type cpioWriter struct {
	w      *bufio.Writer
	n      int64 // bytes written so far
	ino    uint32
	seen   map[string]bool // entries written, by clean name
	closed bool
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<16), seen: map[string]bool{}}
}

// cleanName turns a guest path ("/bin/sh", "bin/sh") into the archive form,
// relative and clean ("bin/sh"), refusing anything that escapes the root.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("cpio name %q: contains NUL", name)
	}
	rel := strings.TrimPrefix(name, "/")
	if rel == "" || rel == "." {
		return "", fmt.Errorf("cpio name %q: the root itself", name)
	}
	// Only clean names: ".." or "." elements would make the guest path
	// differ from what the caller meant, and a second leading slash
	// ("//bin/sh") would leave the name absolute.
	if path.Clean(rel) != rel || path.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("cpio name %q: not a clean path", name)
	}
	return rel, nil
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) error {
	n, err := c.begin(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeDir|cpioPerm(perm), 2, 0, 0, 0, nil)
}

// cpioPerm maps Go's permission and setuid/setgid/sticky flags to st_mode
// bits (Go keeps the latter outside the low 12 bits).
func cpioPerm(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// File adds a regular file of size bytes read from r. r must hold exactly
// size bytes; it is streamed, never held in memory.
func (c *cpioWriter) File(name string, perm fs.FileMode, size int64, r io.Reader) error {
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio file %q: size %d does not fit newc", name, size)
	}
	n, err := c.begin(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeReg|cpioPerm(perm), 1, uint32(size), 0, 0, r)
}

// FileFromDisk adds the host file src as name, streaming it.
func (c *cpioWriter) FileFromDisk(name string, perm fs.FileMode, src string) error {
	return c.FileFromDiskTee(name, perm, src, io.Discard)
}

// FileFromDiskTee is FileFromDisk that also writes what it adds to tee,
// for instance a hash.
func (c *cpioWriter) FileFromDiskTee(name string, perm fs.FileMode, src string, tee io.Writer) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	return c.File(name, perm, st.Size(), io.TeeReader(f, tee))
}

// Symlink adds a symbolic link to target.
func (c *cpioWriter) Symlink(name, target string) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("cpio symlink %q: bad target %q", name, target)
	}
	n, err := c.begin(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeLink|0o777, 1, uint32(len(target)), 0, 0, strings.NewReader(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := c.begin(name)
	if err != nil {
		return err
	}
	return c.entry(n, cpioTypeChar|cpioPerm(perm), 1, 0, major, minor, nil)
}

// Has reports whether name was already added (explicitly or as a parent).
func (c *cpioWriter) Has(name string) bool {
	n, err := cleanName(name)
	return err == nil && c.seen[n]
}

// Size is the number of bytes written so far (after Close: the archive's).
func (c *cpioWriter) Size() int64 { return c.n }

// Close writes the trailer and flushes. It does not close the underlying
// writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if err := c.header(cpioTrailer, 0, 1, 0, 0, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// begin checks name, refuses duplicates, and emits missing parent
// directories first: the kernel's unpacker does not create them, so a child
// before its parent would be dropped.
func (c *cpioWriter) begin(name string) (string, error) {
	if c.closed {
		return "", fmt.Errorf("cpio %q: archive closed", name)
	}
	n, err := cleanName(name)
	if err != nil {
		return "", err
	}
	if c.seen[n] {
		return "", fmt.Errorf("cpio %q: already in the archive", n)
	}
	if dir := path.Dir(n); dir != "." && !c.seen[dir] {
		if err := c.Dir(dir, 0o755); err != nil {
			return "", err
		}
	}
	c.seen[n] = true
	return n, nil
}

func (c *cpioWriter) entry(name string, mode, nlink, size, rmajor, rminor uint32, body io.Reader) error {
	c.ino++
	if err := c.header(name, c.ino, mode, nlink, size, rmajor, rminor); err != nil {
		return err
	}
	if size > 0 {
		m, err := io.CopyN(c.w, body, int64(size))
		c.n += m
		if err != nil {
			return fmt.Errorf("cpio %q: %w", name, err)
		}
	}
	return c.pad()
}

func (c *cpioWriter) header(name string, ino, mode, nlink, size, rmajor, rminor uint32) error {
	// Fields: ino mode uid gid nlink mtime filesize devmajor devminor
	// rdevmajor rdevminor namesize check, each 8 hex digits.
	h := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		cpioMagic, ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	m, err := c.w.WriteString(h + name + "\x00")
	c.n += int64(m)
	if err != nil {
		return err
	}
	return c.pad()
}

// pad aligns to 4 bytes, as newc requires after the name and after the data.
func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		m, err := c.w.Write(make([]byte, 4-r))
		c.n += int64(m)
		return err
	}
	return nil
}
