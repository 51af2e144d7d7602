package guestimage

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one parsed newc entry.
type cpioEntry struct {
	Name         string
	Ino, Mode    uint32
	UID, GID     uint32
	Nlink, Mtime uint32
	RMajor       uint32
	RMinor       uint32
	Data         []byte
}

func (e cpioEntry) typ() uint32 { return e.Mode & 0o170000 }

// readCPIO parses a newc archive strictly: magic, hex fields, NUL-terminated
// names, 4-byte alignment after the header+name and after the data, and a
// trailer at the end with nothing but padding after it.
func readCPIO(data []byte) ([]cpioEntry, error) {
	var out []cpioEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(data) {
			return nil, fmt.Errorf("offset %d: truncated header", off)
		}
		h := data[off : off+110]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("offset %d: bad magic %q", off, h[:6])
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("offset %d: field %d: %v", off, i, err)
			}
			f[i] = uint32(v)
		}
		namesize, size := int(f[11]), int(f[6])
		nameEnd := off + 110 + namesize
		if nameEnd > len(data) || namesize == 0 || data[nameEnd-1] != 0 {
			return nil, fmt.Errorf("offset %d: bad name", off)
		}
		name := string(data[off+110 : nameEnd-1])
		dataStart := align(nameEnd)
		for _, b := range data[nameEnd:dataStart] {
			if b != 0 {
				return nil, fmt.Errorf("%s: non-zero name padding", name)
			}
		}
		if dataStart+size > len(data) {
			return nil, fmt.Errorf("%s: truncated data", name)
		}
		e := cpioEntry{
			Name: name, Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5],
			RMajor: f[9], RMinor: f[10], Data: data[dataStart : dataStart+size],
		}
		off = align(dataStart + size)
		if name == "TRAILER!!!" {
			if len(data) != off {
				return nil, fmt.Errorf("%d bytes after the trailer", len(data)-off)
			}
			return out, nil
		}
		out = append(out, e)
	}
}

func findEntry(entries []cpioEntry, name string) (cpioEntry, bool) {
	for _, e := range entries {
		if e.Name == name {
			return e, true
		}
	}
	return cpioEntry{}, false
}

func TestCPIORoundTrip(t *testing.T) {
	dir := t.TempDir()
	// Large enough that holding it whole would show; odd size so the data
	// padding is exercised.
	big := make([]byte, 3<<20+3)
	rand.Read(big)
	bigPath := filepath.Join(dir, "big")
	if err := os.WriteFile(bigPath, big, 0o600); err != nil {
		t.Fatal(err)
	}

	write := func() []byte {
		var buf bytes.Buffer
		cw := newCPIOWriter(&buf)
		steps := []error{
			cw.Dir("/tmp", 0o777|os.ModeSticky),
			cw.CharDev("/dev/console", 0o600, 5, 1),
			cw.CharDev("/dev/null", 0o666, 1, 3),
			cw.File("/init", 0o755, 5, strings.NewReader("hello")),
			cw.FileFromDisk("/usr/lib/deep/big", 0o644, bigPath),
			cw.Symlink("/bin/sh", "/bin/busybox"),
			cw.File("/etc/empty", 0o644, 0, strings.NewReader("")),
		}
		for i, err := range steps {
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		}
		if err := cw.Close(); err != nil {
			t.Fatal(err)
		}
		if cw.Size() != int64(buf.Len()) {
			t.Fatalf("Size() = %d, wrote %d", cw.Size(), buf.Len())
		}
		return buf.Bytes()
	}
	data := write()
	if !bytes.Equal(data, write()) {
		t.Fatal("two archives of the same input differ")
	}
	if len(data)%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", len(data))
	}
	entries, err := readCPIO(data)
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	seen := map[string]bool{}
	for i, e := range entries {
		names = append(names, e.Name)
		if e.Ino != uint32(i+1) {
			t.Errorf("%s: inode %d, want %d", e.Name, e.Ino, i+1)
		}
		if e.UID != 0 || e.GID != 0 || e.Mtime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want zeros", e.Name, e.UID, e.GID, e.Mtime)
		}
		if strings.HasPrefix(e.Name, "/") {
			t.Errorf("%s: absolute name", e.Name)
		}
		if d := path.Dir(e.Name); d != "." && !seen[d] {
			t.Errorf("%s comes before its parent %s", e.Name, d)
		}
		seen[e.Name] = true
	}
	want := []string{"tmp", "dev", "dev/console", "dev/null", "init", "usr", "usr/lib", "usr/lib/deep", "usr/lib/deep/big", "bin", "bin/sh", "etc", "etc/empty"}
	if !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}

	checks := []struct {
		name   string
		mode   uint32
		data   string
		rmajor uint32
		rminor uint32
	}{
		{"tmp", 0o041777, "", 0, 0},
		{"usr/lib", 0o040755, "", 0, 0},
		{"dev/console", 0o020600, "", 5, 1},
		{"dev/null", 0o020666, "", 1, 3},
		{"init", 0o100755, "hello", 0, 0},
		{"bin/sh", 0o120777, "/bin/busybox", 0, 0},
		{"etc/empty", 0o100644, "", 0, 0},
	}
	for _, c := range checks {
		e, ok := findEntry(entries, c.name)
		if !ok {
			t.Errorf("%s missing", c.name)
			continue
		}
		if e.Mode != c.mode || string(e.Data) != c.data || e.RMajor != c.rmajor || e.RMinor != c.rminor {
			t.Errorf("%s: mode %o data %q rdev %d:%d; want %o %q %d:%d", c.name, e.Mode, e.Data, e.RMajor, e.RMinor, c.mode, c.data, c.rmajor, c.rminor)
		}
	}
	if e, _ := findEntry(entries, "usr/lib/deep/big"); !bytes.Equal(e.Data, big) {
		t.Errorf("big file: %d bytes back, differs from the %d written", len(e.Data), len(big))
	}

	listWithHostTool(t, data, want)
}

// listWithHostTool lists the archive with cpio or busybox cpio, when the
// host has one, as an independent check of the format.
func listWithHostTool(t *testing.T, data []byte, want []string) {
	var cmd *exec.Cmd
	if p, err := exec.LookPath("cpio"); err == nil {
		cmd = exec.Command(p, "-t", "--quiet")
	} else if p, err := exec.LookPath("busybox"); err == nil {
		cmd = exec.Command(p, "cpio", "-t")
	} else {
		t.Log("neither cpio nor busybox on the host: skipping the listing by a host tool")
		return
	}
	cmd.Stdin = bytes.NewReader(data)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, stderr.String())
	}
	var got []string
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		got = append(got, sc.Text())
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s lists %q, want %q", cmd, got, want)
	}
}

func TestCPIORejectsBadEntries(t *testing.T) {
	cw := newCPIOWriter(io.Discard)
	if err := cw.File("/a/b", 0o644, 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		err  error
	}{
		{"duplicate file", cw.File("a/b", 0o644, 0, strings.NewReader(""))},
		{"duplicate implicit dir", cw.Dir("/a", 0o755)},
		{"dot-dot", cw.File("/a/../etc/passwd", 0o644, 0, strings.NewReader(""))},
		{"escape", cw.Dir("../x", 0o755)},
		{"root", cw.Dir("/", 0o755)},
		{"short body", cw.File("/short", 0o644, 10, strings.NewReader("abc"))},
		{"empty symlink", cw.Symlink("/l", "")},
	} {
		if tc.err == nil {
			t.Errorf("%s: accepted", tc.what)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cw.Dir("/late", 0o755); err == nil {
		t.Error("entry after Close accepted")
	}
}
