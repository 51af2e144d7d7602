package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	edge "github.com/cabinvm/cabin/internal/edge/cabinv1"
	"github.com/cabinvm/cabin/internal/ociimage"
)

// ociDaemon serves the real OciImages edge over a real store on a unix
// socket, and returns the socket.
func ociDaemon(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := ociimage.Open(context.Background(), filepath.Join(dir, "oci"), ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	cabinv1.RegisterOciImagesServer(srv, edge.NewOciImages(st))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return sock
}

func cliImage(t *testing.T, body string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))})
	io.WriteString(tw, body)
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/hello"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestImageVerbs(t *testing.T) {
	sock := ociDaemon(t)
	cli := func(stdin io.Reader, args ...string) result {
		return runCLI(t, stdin, append([]string{"--socket", sock}, args...)...)
	}
	dir := t.TempDir()

	// docker save tarball, streamed from a file.
	saved := filepath.Join(dir, "saved.tar")
	tag, _ := name.NewTag("example.com/hello:v1")
	if err := tarball.WriteToFile(saved, tag, cliImage(t, "one")); err != nil {
		t.Fatal(err)
	}
	r := cli(nil, "image", "import", saved)
	if r.code != 0 || !strings.Contains(r.stdout, "sha256:") || !strings.Contains(r.stdout, "example.com/hello:v1") {
		t.Fatalf("import file: %+v", r)
	}
	// The same from standard input, with a tag of its own.
	b, _ := os.ReadFile(saved)
	if r := cli(bytes.NewReader(b), "image", "import", "--tag", "again:v1", "-"); r.code != 0 || !strings.Contains(r.stdout, "again:v1") {
		t.Fatalf("import -: %+v", r)
	}
	// An OCI layout directory.
	lay := filepath.Join(dir, "layout")
	p, _ := layout.Write(lay, empty.Index)
	p.AppendImage(cliImage(t, "two"), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "example.com/two:v1"}))
	if r := cli(nil, "image", "import", lay); r.code != 0 || !strings.Contains(r.stdout, "example.com/two:v1") {
		t.Fatalf("import dir: %+v", r)
	}
	// cabind reading the file itself.
	if r := cli(nil, "image", "import", "--on-host", "--json", saved); r.code != 0 || !strings.Contains(r.stdout, `"digest"`) {
		t.Fatalf("import --on-host: %+v", r)
	}

	r = cli(nil, "image", "ls")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 4 || !strings.Contains(r.stdout, "example.com/two:v1") {
		t.Fatalf("ls: %+v", r)
	}
	r = cli(nil, "image", "inspect", "example.com/hello:v1")
	var det struct {
		Config struct{ Entrypoint []string }
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &det) != nil || len(det.Config.Entrypoint) != 1 || det.Config.Entrypoint[0] != "/hello" {
		t.Fatalf("inspect: %+v", r)
	}
	if r := cli(nil, "image", "rm", "example.com/two:v1"); r.code != 0 || !strings.Contains(r.stdout, "removed example.com/two:v1") {
		t.Fatalf("rm: %+v", r)
	}
	if r := cli(nil, "image", "inspect", "example.com/two:v1"); r.code == 0 || !strings.Contains(r.stderr, "no such image") {
		t.Errorf("inspect of a removed image: %+v", r)
	}

	// Bad input: usage errors and refusals.
	if r := cli(nil, "image", "import"); r.code != 2 {
		t.Errorf("import without a file: %+v", r)
	}
	if r := cli(nil, "image", "rm"); r.code != 2 {
		t.Errorf("rm without a reference: %+v", r)
	}
	if r := cli(strings.NewReader("not a tarball"), "image", "import", "-"); r.code == 0 || !strings.Contains(r.stderr, "malformed tar") {
		t.Errorf("import of garbage: %+v", r)
	}
	if r := cli(nil, "image", "import", filepath.Join(dir, "missing.tar")); r.code == 0 {
		t.Errorf("import of a missing file: %+v", r)
	}
}

func TestImagePull(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref, _ := name.ParseReference(u.Host + "/team/hello:v1")
	if err := remote.Write(ref, cliImage(t, "pulled")); err != nil {
		t.Fatal(err)
	}
	sock := ociDaemon(t)
	r := runCLI(t, nil, "--socket", sock, "image", "pull", u.Host+"/team/hello:v1")
	if r.code != 0 || !strings.Contains(r.stdout, u.Host+"/team/hello:v1") || !strings.Contains(r.stderr, "100%") {
		t.Fatalf("pull: %+v", r)
	}
	if r := runCLI(t, nil, "--socket", sock, "image", "pull", u.Host+"/team/missing:v1"); r.code == 0 {
		t.Errorf("pull of a missing image: %+v", r)
	}
}
