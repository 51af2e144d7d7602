package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzUnpack applies arbitrary bytes as a layer, twice over the same
// root (so later entries meet earlier ones, links and whiteouts
// included): whatever it is, nothing appears beside the root, and no
// device node inside it.
func FuzzUnpack(f *testing.F) {
	for _, ents := range [][]ent{
		{dir("a/"), file("a/b", "x"), symlink("l", "a"), file("l/c", "y"), hardlink("h", "a/b")},
		{file("../x", "x")},
		{symlink("up", "../outside"), file("up/f", "x"), symlink("abs", "/"), file("abs/g", "y")},
		{symlink("s", "../../../../.."), hardlink("h", "s/etc/passwd")},
		{dir("d/"), file("d/x", "x"), file("d/.wh..wh..opq", ""), file(".wh.d", ""), file(".wh.", "")},
		{{name: "dev/null", typ: tar.TypeChar, mode: 0o666}, {name: "p", typ: tar.TypeFifo}},
		{{name: "big", typ: tar.TypeReg, size: 1 << 40}},
	} {
		f.Add(tarBytes(f, ents...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		base := t.TempDir()
		root := filepath.Join(base, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(base, "outside"), 0o755); err != nil {
			t.Fatal(err)
		}
		u, err := newUnpacker(root, Limits{MaxEntries: 64, MaxFileSize: 1 << 16, MaxTotalSize: 1 << 18}, false, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer u.close()
		_ = u.layer(bytes.NewReader(b))
		_ = u.layer(bytes.NewReader(b))
		ents, _ := os.ReadDir(base)
		if len(ents) != 2 {
			t.Fatalf("beside the root: %v", ents)
		}
		if out, _ := os.ReadDir(filepath.Join(base, "outside")); len(out) != 0 {
			t.Fatalf("written outside the root: %v", out)
		}
		filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Type()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe) != 0 {
				t.Errorf("%s: a device node or fifo", p)
			}
			return nil
		})
		// Make sure t.TempDir can clean up what a layer made read-only.
		filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

// FuzzParseIndex: parseIndex never panics, and what it accepts survives
// a round trip.
func FuzzParseIndex(f *testing.F) {
	d := "sha256:" + strings.Repeat("ab", 32)
	f.Add([]byte(`{"version":1,"tags":{"index.docker.io/library/busybox:latest":"` + d + `"},"images":{"` + d + `":{"config":"` + d + `","layers":["` + d + `"]}}}`))
	f.Add([]byte(`{"version":1,"tags":{"busybox":"` + d + `"}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"images":{"sha256:zz":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := parseIndex(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(ix)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseIndex(out)
		if err != nil {
			t.Fatalf("reparse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(normalise(ix), normalise(again)) {
			t.Fatalf("round trip changed the index: %s", out)
		}
	})
}

func normalise(ix *index) *index {
	for _, r := range ix.Images {
		if len(r.Layers) == 0 {
			r.Layers = nil
		}
	}
	return ix
}

// FuzzParseRef: references and layer names parse without panics, a
// canonical tag parses to itself, and a clean name never climbs out.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"busybox", "example.com/a/b:v1", "a@sha256:" + strings.Repeat("0", 64), "sha256:" + strings.Repeat("f", 64),
		"localhost:5000/x", "../etc/passwd", "/abs", "a/./b//c/", "UPPER", "x@sha256:short", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := parseRef("ref", s); err == nil {
			if r.tag != "" {
				again, err := ParseTag("ref", r.tag)
				if err != nil || again != r.tag {
					t.Fatalf("canonical tag %q parses to %q, %v", r.tag, again, err)
				}
			} else if _, err := ParseDigest("ref", string(r.digest)); err != nil {
				t.Fatalf("digest %q: %v", r.digest, err)
			}
		}
		if n, err := cleanName("name", s); err == nil {
			if strings.HasPrefix(n, "/") || n == ".." || strings.HasPrefix(n, "../") || strings.Contains(n, "/../") || strings.HasSuffix(n, "/..") {
				t.Fatalf("cleanName(%q) = %q", s, n)
			}
			if filepath.IsAbs(filepath.Join("x", n)) || !strings.HasPrefix(filepath.Join("/root", n), "/root") {
				t.Fatalf("cleanName(%q) = %q leaves the root", s, n)
			}
		}
	})
}
