package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// outside is a directory beside the store that a layer tries to reach;
// it holds one file, and must hold only that afterwards.
func outside(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "secret"), []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

func checkOutside(t *testing.T, d string) {
	t.Helper()
	ents, err := os.ReadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "secret" || readFile(t, filepath.Join(d, "secret")) != "host secret" {
		t.Errorf("the directory outside changed: %v", ents)
	}
}

func TestHostileLayersAreRefusedAndLeaveNothing(t *testing.T) {
	out := outside(t)
	big := strings.Repeat("\x00", 4<<20)
	small := Limits{MaxEntries: 20, MaxFileSize: 1 << 20, MaxTotalSize: 2 << 20}
	var many []ent
	for i := range 30 {
		many = append(many, file("f"+string(rune('a'+i%26))+string(rune('a'+i/26)), "x"))
	}
	var fill []ent
	for i := range 5 {
		fill = append(fill, file("fill"+string(rune('0'+i)), strings.Repeat("y", 600<<10)))
	}
	truncated := tarBytes(t, file("a", strings.Repeat("z", 4096)))
	for name, tc := range map[string]struct {
		layer v1.Layer
		kind  error
	}{
		"dot-dot name":               {layerOf(t, file("../escape", "x")), errdefs.ErrInvalidArgument},
		"dot-dot deep":               {layerOf(t, dir("a/"), file("a/../../escape", "x")), errdefs.ErrInvalidArgument},
		"absolute name":              {layerOf(t, file(filepath.Join(out, "abs"), "x")), errdefs.ErrInvalidArgument},
		"hard link out by dot-dot":   {layerOf(t, hardlink("h", "../../../../etc/passwd")), errdefs.ErrInvalidArgument},
		"hard link out absolute":     {layerOf(t, hardlink("h", filepath.Join(out, "secret"))), errdefs.ErrInvalidArgument},
		"hard link through symlink":  {layerOf(t, symlink("s", out), hardlink("h", "s/secret")), errdefs.ErrInvalidArgument},
		"hard link to a directory":   {layerOf(t, dir("d/"), hardlink("h", "d")), errdefs.ErrInvalidArgument},
		"whiteout of the root":       {layerOf(t, file(".wh.", "")), errdefs.ErrInvalidArgument},
		"whiteout of dot-dot":        {layerOf(t, file("a/.wh..", "")), errdefs.ErrInvalidArgument},
		"decompression bomb":         {layerOf(t, file("zeros", big)), errdefs.ErrResourceExhausted},
		"header lies about the size": {layerOf(t, ent{name: "zeros", typ: tar.TypeReg, body: "", size: 1 << 40}), errdefs.ErrResourceExhausted},
		"total over the cap":         {layerOf(t, fill...), errdefs.ErrResourceExhausted},
		"entries over the cap":       {layerOf(t, many...), errdefs.ErrResourceExhausted},
		"truncated tar":              {rawLayer(t, truncated[:1500]), errdefs.ErrInvalidArgument},
		"garbage":                    {rawLayer(t, bytes.Repeat([]byte("garbage!"), 200)), errdefs.ErrInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, Options{Limits: small})
			_, err := s.importImage(imageOf(t, layerOf(t, file("ok", "fine")), tc.layer), "example.com/evil:v1")
			if !errors.Is(err, tc.kind) {
				t.Errorf("import = %v, want %v", err, tc.kind)
			}
			s.assertEmpty()
			checkOutside(t, out)
		})
	}
}

// A symbolic link planted by one entry (or layer) and a file written
// through it: the link resolves inside the root filesystem, as it would
// in the container, so the file lands there and never outside; where it
// leads nowhere inside, the layer is refused.
func TestSymlinkThenFileThroughItStaysInside(t *testing.T) {
	out := outside(t)
	s := newStore(t, Options{})
	d, err := s.importImage(imageOf(t,
		layerOf(t, dir("etc/"), symlink("rel", "../../../../../../etc"), symlink("root", "/")),
		layerOf(t, file("rel/pwned", "a"), file("root/etc/passwd", "c"))),
		"example.com/links:v1")
	if err != nil {
		t.Fatal(err)
	}
	checkOutside(t, out)
	root := filepath.Join(s.dir, "rootfs", d.Hex())
	for p, body := range map[string]string{"etc/pwned": "a", "etc/passwd": "c"} {
		if got := readFile(t, filepath.Join(root, p)); got != body {
			t.Errorf("%s = %q, want %q", p, got, body)
		}
	}

	for name, l := range map[string]v1.Layer{
		"same layer":   layerOf(t, symlink("abs", out), file("abs/pwned", "a")),
		"over a file":  layerOf(t, symlink("abs", filepath.Join(out, "secret")), file("abs", "overwrite")),
		"secret link":  layerOf(t, symlink("abs", out), file("abs/secret", "overwrite")),
		"looping link": layerOf(t, symlink("loop", "loop"), file("loop/x", "x")),
	} {
		s := newStore(t, Options{})
		_, err := s.importImage(imageOf(t, l), "example.com/links:v1")
		if name == "over a file" {
			// The file replaces the link itself.
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		} else {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: %v, want InvalidArgument", name, err)
			}
			s.assertEmpty()
		}
		checkOutside(t, out)
	}
}

func TestDeviceNodesSkippedUnlessAllowed(t *testing.T) {
	dev := ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666}
	fifo := ent{name: "fifo", typ: tar.TypeFifo, mode: 0o644}
	img := imageOf(t, layerOf(t, dir("dev/"), dev, fifo, file("ok", "x")))

	s := newStore(t, Options{})
	d, err := s.importImage(img, "example.com/dev:v1")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(s.dir, "rootfs", d.Hex())
	for _, p := range []string{"dev/null", "fifo"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s created by default: %v", p, err)
		}
	}
	if readFile(t, filepath.Join(root, "ok")) != "x" {
		t.Error("the rest of the layer is missing")
	}

	skipUnlessRoot(t, "mknod of a character device")
	s = newStore(t, Options{AllowDevices: true})
	if d, err = s.importImage(img, "example.com/dev:v1"); err != nil {
		t.Fatal(err)
	}
	root = filepath.Join(s.dir, "rootfs", d.Hex())
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(root, "dev/null"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 1<<8|3 {
		t.Errorf("dev/null: %v %o %x", err, st.Mode, st.Rdev)
	}
	if err := syscall.Lstat(filepath.Join(root, "fifo"), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		t.Errorf("fifo: %v %o", err, st.Mode)
	}
}

func TestOwnersModesAndXattrs(t *testing.T) {
	skipUnlessRoot(t, "chown to the layer's owners")
	s := newStore(t, Options{})
	suid := ent{name: "bin/su", typ: tar.TypeReg, body: "su", mode: 0o4755, uid: 0, gid: 0}
	owned := ent{name: "home/u/f", typ: tar.TypeReg, body: "f", mode: 0o600, uid: 1000, gid: 1001,
		pax: map[string]string{"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.evil": "no"}}
	ro := ent{name: "ro/", typ: tar.TypeDir, mode: 0o555}
	d, err := s.importImage(imageOf(t, layerOf(t, dir("bin/"), suid, dir("home/"), dir("home/u/"), owned, ro, file("ro/inside", "i"))), "example.com/own:v1")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(s.dir, "rootfs", d.Hex())
	var st syscall.Stat_t
	if syscall.Lstat(filepath.Join(root, "bin/su"), &st) != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/su mode %o, want 4755", st.Mode&0o7777)
	}
	if syscall.Lstat(filepath.Join(root, "home/u/f"), &st) != nil || st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o777 != 0o600 {
		t.Errorf("home/u/f %d:%d %o", st.Uid, st.Gid, st.Mode&0o777)
	}
	if st.Mtim.Sec != 1700000000 {
		t.Errorf("mtime %d", st.Mtim.Sec)
	}
	buf := make([]byte, 64)
	if n, err := syscall.Getxattr(filepath.Join(root, "home/u/f"), "user.note", buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("user.note = %q, %v", buf[:n], err)
	}
	if _, err := syscall.Getxattr(filepath.Join(root, "home/u/f"), "trusted.evil", buf); err == nil {
		t.Error("a trusted.* xattr from a layer was applied")
	}
	if syscall.Lstat(filepath.Join(root, "ro"), &st) != nil || st.Mode&0o777 != 0o555 {
		t.Errorf("ro mode %o", st.Mode&0o777)
	}
}

func TestCorruptSources(t *testing.T) {
	img := imageOf(t, layerOf(t, file("a", strings.Repeat("a", 1000))), layerOf(t, file("b", "b")))
	layers, _ := img.Layers()
	first, _ := layers[0].Digest()
	for name, tc := range map[string]struct {
		spoil func(dir string)
		kind  error
	}{
		"layer blob does not match its digest": {func(dir string) {
			p := filepath.Join(dir, "blobs", "sha256", first.Hex)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o644)
		}, errdefs.ErrInvalidArgument},
		"layer blob truncated": {func(dir string) {
			p := filepath.Join(dir, "blobs", "sha256", first.Hex)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2], 0o644)
		}, errdefs.ErrInvalidArgument},
		"manifest names a missing blob": {func(dir string) {
			os.Remove(filepath.Join(dir, "blobs", "sha256", first.Hex))
		}, errdefs.ErrInvalidArgument},
		"manifest does not match its digest": {func(dir string) {
			h, _ := img.Digest()
			p := filepath.Join(dir, "blobs", "sha256", h.Hex)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, ' '), 0o644)
		}, errdefs.ErrInvalidArgument},
		"config does not match its digest": {func(dir string) {
			h, _ := img.ConfigName()
			p := filepath.Join(dir, "blobs", "sha256", h.Hex)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte("amd64"), []byte("AMD64"), 1), 0o644)
		}, errdefs.ErrInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, Options{})
			dir := writeLayout(t, img, "example.com/corrupt:v1")
			tc.spoil(dir)
			if _, err := s.ImportDir(context.Background(), dir, ImportOptions{}); !errors.Is(err, tc.kind) {
				t.Errorf("import = %v, want %v", err, tc.kind)
			}
			s.assertEmpty()
		})
	}
}
