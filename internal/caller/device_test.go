package caller

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// OpenDevice opens a character device of the major asked for, read and
// write, for a caller that may read and write it; nothing else.
func TestOpenDevice(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to make device nodes (mknod)")
	}
	// Searchable by anyone, so that only the node's own mode decides.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A node of /dev/null's device (1:3), mode 0600, root's.
	node := filepath.Join(dir, "null")
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("cannot make a device node here: %v", err)
	}
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(node, link); err != nil {
		t.Fatal(err)
	}
	user := &Caller{UID: 12345, GIDs: []uint32{12345}}

	f, err := (*Caller)(nil).OpenDevice(node, 1)
	if err != nil {
		t.Fatalf("root: %v", err)
	}
	if _, err := f.Write([]byte("x")); err != nil {
		t.Errorf("not open for writing: %v", err)
	}
	f.Close()
	for _, c := range []struct {
		name string
		c    *Caller
		path string
		maj  uint32
		want error
	}{
		{"another major", nil, node, 189, ErrNotCharDevice},
		{"a regular file", nil, regular, 1, ErrNotCharDevice},
		{"a link", nil, link, 1, ErrSymlink},
		{"a user without rw", user, node, 1, ErrPermission},
		{"a relative path", nil, "dev/null", 1, ErrRelative},
	} {
		f, err := c.c.OpenDevice(c.path, c.maj)
		if f != nil {
			f.Close()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := (*Caller)(nil).OpenDevice(filepath.Join(dir, "none"), 1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	// Owned by the user with rw: it may.
	if err := os.Chown(node, 12345, 0); err != nil {
		t.Fatal(err)
	}
	if f, err := user.OpenDevice(node, 1); err != nil {
		t.Errorf("the owner: %v", err)
	} else {
		f.Close()
	}
}
