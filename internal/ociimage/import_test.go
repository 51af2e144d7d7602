package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// layeredImage has two layers exercising whiteouts, opaque directories,
// hard links and symbolic links.
func layeredImage(t testing.TB) v1.Image {
	base := layerOf(t,
		dir("etc/"), file("etc/os-release", "base\n"), file("etc/gone", "x"),
		dir("opaque/"), file("opaque/old", "old"), dir("opaque/sub/"), file("opaque/sub/deep", "d"),
		dir("usr/"), dir("usr/bin/"), file("usr/bin/tool", "#!/bin/sh\n"),
		symlink("bin", "usr/bin"), hardlink("usr/bin/tool2", "usr/bin/tool"),
		dir("keep/"), file("keep/a", "a"),
	)
	top := layerOf(t,
		file("etc/.wh.gone", ""),
		dir("opaque/"), file("opaque/.wh..wh..opq", ""), file("opaque/new", "new"),
		file("bin/added", "through the bin link"),
		file("keep/b", "b"),
	)
	return imageOf(t, base, top)
}

func checkLayered(t *testing.T, root string) {
	t.Helper()
	want := map[string]string{
		"etc/os-release": "base\n", "opaque/new": "new", "usr/bin/tool": "#!/bin/sh\n", "usr/bin/tool2": "#!/bin/sh\n",
		"usr/bin/added": "through the bin link", "keep/a": "a", "keep/b": "b",
	}
	for p, body := range want {
		if got := readFile(t, filepath.Join(root, p)); got != body {
			t.Errorf("%s = %q, want %q", p, got, body)
		}
	}
	for _, p := range []string{"etc/gone", "etc/.wh.gone", "opaque/old", "opaque/sub", "opaque/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it gone", p, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, "bin")); err != nil || l != "usr/bin" {
		t.Errorf("bin -> %q, %v", l, err)
	}
	var a, b syscall.Stat_t
	if syscall.Stat(filepath.Join(root, "usr/bin/tool"), &a) != nil || syscall.Stat(filepath.Join(root, "usr/bin/tool2"), &b) != nil || a.Ino != b.Ino {
		t.Error("usr/bin/tool2 is not a hard link of usr/bin/tool")
	}
}

func TestImportLayoutDirectory(t *testing.T) {
	s := newStore(t, Options{})
	img := layeredImage(t)
	d, err := s.importImage(img, "example.com/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if d != digestOf(t, img) {
		t.Errorf("digest %s, want the manifest's %s", d, digestOf(t, img))
	}
	det, err := s.Inspect(context.Background(), "example.com/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	checkLayered(t, det.RootFS)
	want := Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"PATH=/bin", "A=b"},
		User: "1000:1000", WorkingDir: "/work", ExposedPorts: []string{"53/udp", "80/tcp"}, Labels: map[string]string{"k": "v"}}
	if !reflect.DeepEqual(det.Config, want) {
		t.Errorf("config %+v, want %+v", det.Config, want)
	}
	if len(det.Layers) != 2 || det.OS != "linux" || det.Architecture != "amd64" || det.Created.Year() != 2024 {
		t.Errorf("details %+v", det)
	}
	ls := s.List(context.Background())
	if len(ls) != 1 || !slices.Equal(ls[0].Tags, []string{"example.com/team/app:v1"}) || ls[0].Digest != d || ls[0].Size <= 0 || ls[0].Unpacked <= 0 {
		t.Errorf("List = %+v", ls)
	}
	for _, ref := range []string{string(d), "example.com/team/app@" + string(d)} {
		if _, err := s.Inspect(context.Background(), ref); err != nil {
			t.Errorf("Inspect(%s): %v", ref, err)
		}
	}
	for ref, kind := range map[string]error{"example.com/team/app:v2": errdefs.ErrNotFound, "sha256:abc": errdefs.ErrInvalidArgument, "Bad Name!": errdefs.ErrInvalidArgument, "": errdefs.ErrInvalidArgument} {
		if _, err := s.Inspect(context.Background(), ref); !errors.Is(err, kind) {
			t.Errorf("Inspect(%q) = %v, want %v", ref, err, kind)
		}
	}
}

func TestImportLayoutTarFromReader(t *testing.T) {
	s := newStore(t, Options{})
	img := layeredImage(t)
	b := tarDir(t, writeLayout(t, img, "example.com/team/app:v1"))
	ds, err := s.ImportReader(context.Background(), bytes.NewReader(b), ImportOptions{Tag: "local/extra:tag"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0] != digestOf(t, img) {
		t.Fatalf("imported %v", ds)
	}
	ls := s.List(context.Background())
	if len(ls) != 1 || !slices.Equal(ls[0].Tags, []string{"example.com/team/app:v1", "index.docker.io/local/extra:tag"}) {
		t.Errorf("List = %+v", ls)
	}
	checkLayered(t, filepath.Join(s.dir, "rootfs", ds[0].Hex()))
}

func TestImportDockerSaveTarball(t *testing.T) {
	s := newStore(t, Options{})
	img := layeredImage(t)
	p := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("busybox")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ds, err := s.ImportFile(context.Background(), f, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	det, err := s.Inspect(context.Background(), "busybox")
	if err != nil {
		t.Fatal(err)
	}
	if det.Digest != ds[0] || !slices.Equal(det.Tags, []string{"index.docker.io/library/busybox:latest"}) {
		t.Errorf("details %+v", det)
	}
	checkLayered(t, det.RootFS)
	// Importing it again names the same image; nothing is unpacked twice.
	f.Seek(0, 0)
	again, err := s.ImportFile(context.Background(), f, ImportOptions{Tag: "other:v2"})
	if err != nil || again[0] != ds[0] {
		t.Fatalf("re-import = %v, %v; want %s", again, err, ds[0])
	}
	if ls := s.List(context.Background()); len(ls) != 1 || len(ls[0].Tags) != 2 {
		t.Errorf("List = %+v", ls)
	}
}

func TestImportRefusesWhatIsNoImage(t *testing.T) {
	s := newStore(t, Options{})
	for name, b := range map[string][]byte{
		"empty":          nil,
		"not a tar":      []byte("hello"),
		"tar of nothing": tarBytes(t, file("readme", "hi")),
	} {
		if _, err := s.ImportReader(context.Background(), bytes.NewReader(b), ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := s.ImportDir(context.Background(), t.TempDir(), ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty directory: %v", err)
	}
	img := layeredImage(t)
	if _, err := s.ImportDir(context.Background(), writeLayout(t, img, ""), ImportOptions{Tag: "Not A Tag"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad tag: %v", err)
	}
	s.assertEmpty()
}

func TestPullFromRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	host := u.Host
	ctx := context.Background()

	img := layeredImage(t)
	ref, _ := name.ParseReference(host + "/team/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	arm := imageOf(t, layerOf(t, file("arm", "arm")))
	mixed := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	idxRef, _ := name.ParseReference(host + "/team/multi:v1")
	if err := remote.WriteIndex(idxRef, mixed); err != nil {
		t.Fatal(err)
	}
	armOnly := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	armRef, _ := name.ParseReference(host + "/team/arm:v1")
	if err := remote.WriteIndex(armRef, armOnly); err != nil {
		t.Fatal(err)
	}

	s := newStore(t, Options{})
	var seen []Progress
	d, err := s.Pull(ctx, host+"/team/app:v1", PullOptions{ImportOptions: ImportOptions{Progress: func(p Progress) { seen = append(seen, p) }}})
	if err != nil {
		t.Fatal(err)
	}
	if d != digestOf(t, img) {
		t.Errorf("pulled %s, want %s", d, digestOf(t, img))
	}
	if len(seen) == 0 || seen[len(seen)-1].Done != seen[len(seen)-1].Total {
		t.Errorf("progress %v", seen)
	}
	det, err := s.Inspect(ctx, host+"/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	checkLayered(t, det.RootFS)

	// A multi-platform index yields its linux/amd64 image.
	if d2, err := s.Pull(ctx, host+"/team/multi:v1", PullOptions{}); err != nil || d2 != d {
		t.Errorf("pull of the index = %s, %v; want %s", d2, err, d)
	}
	if _, err := s.Pull(ctx, host+"/team/arm:v1", PullOptions{}); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("pull of an arm64-only index = %v", err)
	}
	if _, err := s.Pull(ctx, host+"/team/none:v1", PullOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("pull of a missing image = %v", err)
	}
	if _, err := s.Pull(ctx, "UPPER/case", PullOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("pull of a bad reference = %v", err)
	}
	if ls := s.List(ctx); len(ls) != 1 || len(ls[0].Tags) != 2 {
		t.Errorf("List = %+v", ls)
	}
}

func TestPullUnreachableRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	u, _ := url.Parse(srv.URL)
	srv.Close()
	s := newStore(t, Options{})
	if _, err := s.Pull(context.Background(), u.Host+"/team/app:v1", PullOptions{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("pull from a closed registry = %v, want Unavailable", err)
	}
	s.assertEmpty()
}

// TestImportDockerSaveUncompressed imports a tarball laid out as `docker
// save` writes it: uncompressed layer tars, a config named by its digest,
// manifest.json, and (Docker 25+) an OCI layout beside them.
func TestImportDockerSaveUncompressed(t *testing.T) {
	l1 := tarBytes(t, dir("bin/"), file("bin/busybox", "BB"), symlink("bin/sh", "busybox"))
	l2 := tarBytes(t, file("bin/.wh.sh", ""), file("etc", "x"))
	cfg := fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["%s","%s"]}}`,
		sha256Digest(l1), sha256Digest(l2))
	manifest := fmt.Sprintf(`[{"Config":"blobs/sha256/%s","RepoTags":["busybox:static"],"Layers":["blobs/sha256/%s","blobs/sha256/%s"]}]`,
		sha256Digest([]byte(cfg)).Hex(), sha256Digest(l1).Hex(), sha256Digest(l2).Hex())
	b := tarBytes(t,
		ent{name: "blobs/sha256/" + sha256Digest([]byte(cfg)).Hex(), body: cfg, typ: tar.TypeReg, mode: 0o644},
		ent{name: "blobs/sha256/" + sha256Digest(l1).Hex(), body: string(l1), typ: tar.TypeReg, mode: 0o644},
		ent{name: "blobs/sha256/" + sha256Digest(l2).Hex(), body: string(l2), typ: tar.TypeReg, mode: 0o644},
		file("manifest.json", manifest), file("oci-layout", `{"imageLayoutVersion":"1.0.0"}`), file("index.json", `{"schemaVersion":2,"manifests":[]}`),
	)
	s := newStore(t, Options{})
	ds, err := s.ImportReader(context.Background(), bytes.NewReader(b), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	det, err := s.Inspect(context.Background(), "busybox:static")
	if err != nil || det.Digest != ds[0] {
		t.Fatalf("Inspect = %+v, %v", det, err)
	}
	if !slices.Equal(det.Config.Cmd, []string{"sh"}) || len(det.Layers) != 2 || det.Layers[0].Digest != sha256Digest(l1) {
		t.Errorf("details %+v", det)
	}
	if readFile(t, filepath.Join(det.RootFS, "bin/busybox")) != "BB" || readFile(t, filepath.Join(det.RootFS, "etc")) != "x" {
		t.Error("root filesystem content")
	}
	if _, err := os.Lstat(filepath.Join(det.RootFS, "bin/sh")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bin/sh whited out: %v", err)
	}

	// A layer whose content does not match the config's diff id is refused.
	bad := bytes.Replace(b, []byte("BB"), []byte("XX"), 1)
	s2 := newStore(t, Options{})
	if _, err := s2.ImportReader(context.Background(), bytes.NewReader(bad), ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("tampered layer: %v", err)
	}
	s2.assertEmpty()
}

// Unpacked as someone other than root, the layer's owners, setuid bits
// and security.capability are dropped, and directories stay writable.
func TestUnpackWithoutOwners(t *testing.T) {
	root := t.TempDir()
	u, err := newUnpacker(root, DefaultLimits, false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	u.owners = false
	err = u.layer(bytes.NewReader(tarBytes(t,
		ent{name: "su", typ: tar.TypeReg, body: "su", mode: 0o4755, uid: 0},
		ent{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		ent{name: "ping", typ: tar.TypeReg, body: "p", mode: 0o755, pax: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}},
	)))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(root, "su")); st.Mode()&os.ModeSetuid != 0 || st.Mode().Perm() != 0o755 {
		t.Errorf("su mode %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(root, "ro")); st.Mode().Perm() != 0o755 {
		t.Errorf("ro mode %v, want 0755 (0555 and owner rwx)", st.Mode())
	}
	if _, err := syscall.Getxattr(filepath.Join(root, "ping"), "security.capability", make([]byte, 64)); err == nil {
		t.Error("security.capability applied without owners")
	}
}

// Layers compressed with zstd, or not at all, unpack alike: compression
// is told by the first bytes.
func TestLayerCompressions(t *testing.T) {
	b := tarBytes(t, dir("z/"), file("z/f", strings.Repeat("zstd ", 1000)))
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	zl, err := tarball.LayerFromOpener(opener, tarball.WithCompression(compression.ZStd))
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t, Options{})
	d, err := s.importImage(imageOf(t, zl, static.NewLayer(tarBytes(t, file("plain", "p")), types.OCIUncompressedLayer)), "example.com/z:v1")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(s.dir, "rootfs", d.Hex())
	if readFile(t, filepath.Join(root, "z/f")) != strings.Repeat("zstd ", 1000) || readFile(t, filepath.Join(root, "plain")) != "p" {
		t.Error("content of zstd and uncompressed layers")
	}
	det, _ := s.Inspect(context.Background(), string(d))
	blob := readFile(t, filepath.Join(s.dir, "blobs", "sha256", det.Layers[0].Digest.Hex()))
	if !strings.HasPrefix(blob, "\x28\xb5\x2f\xfd") {
		t.Errorf("the first layer is not stored as zstd: % x", blob[:4])
	}
	if blob := readFile(t, filepath.Join(s.dir, "blobs", "sha256", det.Layers[1].Digest.Hex())); !strings.Contains(blob, "ustar") {
		t.Error("the second layer is not stored as a plain tar")
	}
}

func TestLayoutTarWithADuplicateBlob(t *testing.T) {
	s := newStore(t, Options{})
	dir := writeLayout(t, layeredImage(t), "example.com/dup:v1")
	b := tarDir(t, dir)
	// The same index.json twice: the second would replace the first.
	b = append(b[:len(b)-1024], tarBytes(t, file("index.json", `{"schemaVersion":2,"manifests":[]}`))...)
	if _, err := s.ImportReader(context.Background(), bytes.NewReader(b), ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("import = %v, want InvalidArgument", err)
	} else if !strings.Contains(err.Error(), "twice") {
		t.Errorf("import = %v, want the duplicate named", err)
	}
	s.assertEmpty()
}
