package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ent is one tar entry of a generated layer.
type ent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	size             int64 // header size when it differs from body's
	pax              map[string]string
}

func file(name, body string) ent { return ent{name: name, body: body, typ: tar.TypeReg, mode: 0o644} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) ent {
	return ent{name: name, link: to, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, to string) ent { return ent{name: name, link: to, typ: tar.TypeLink, mode: 0o644} }

// tarBytes writes entries as a tar; a body shorter than size truncates it.
func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		size := int64(len(e.body))
		if e.size != 0 {
			size = e.size
		}
		if e.typ != tar.TypeReg {
			size = 0
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Uid: e.uid, Gid: e.gid, Size: size,
			ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax, Format: tar.FormatPAX}
		if e.typ == tar.TypeChar {
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	tw.Flush()
	return buf.Bytes()
}

// layerOf is a gzip layer of the entries.
func layerOf(t testing.TB, ents ...ent) v1.Layer {
	t.Helper()
	return rawLayer(t, tarBytes(t, ents...))
}

// rawLayer is a gzip layer holding b as its uncompressed content.
func rawLayer(t testing.TB, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf is a linux/amd64 image of the layers with a config worth
// inspecting.
func imageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)}
	cf.Config = v1.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"PATH=/bin", "A=b"},
		User: "1000:1000", WorkingDir: "/work", ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}}, Labels: map[string]string{"k": "v"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t testing.TB, img v1.Image) Digest {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return Digest(h.String())
}

// writeLayout writes img as an OCI image layout in a new directory,
// named tag (a full name) in its index.
func writeLayout(t testing.TB, img v1.Image, tag string) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarDir makes a tar of the tree at dir (as `tar -C dir -cf - .`).
func tarDir(t testing.TB, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

type testStore struct {
	*Store
	t   testing.TB
	dir string
}

func newStore(t testing.TB, opts Options) *testStore {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &testStore{Store: s, t: t, dir: dir}
}

// assertEmpty checks the store lists nothing and keeps nothing: no blob,
// root filesystem, block image or temporary.
func (s *testStore) assertEmpty() {
	s.t.Helper()
	if imgs := s.List(context.Background()); len(imgs) != 0 {
		s.t.Errorf("List = %v, want nothing", imgs)
	}
	for _, d := range []string{"blobs/sha256", "rootfs", "block", "tmp"} {
		ents, err := os.ReadDir(filepath.Join(s.dir, d))
		if err != nil {
			s.t.Fatal(err)
		}
		for _, e := range ents {
			s.t.Errorf("%s/%s left behind", d, e.Name())
		}
	}
}

// importImage imports img through an OCI layout directory.
func (s *testStore) importImage(img v1.Image, tag string) (Digest, error) {
	ds, err := s.ImportDir(context.Background(), writeLayout(s.t, img, tag), ImportOptions{})
	if err != nil {
		return "", err
	}
	return ds[0], nil
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func skipUnlessRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root: %s", why)
	}
}
