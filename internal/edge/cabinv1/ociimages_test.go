package cabinv1

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/ociimage"
)

// ociTestImage is a one-layer linux/amd64 image holding files.
func ociTestImage(t *testing.T, files map[string]string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[n]))})
		io.WriteString(tw, files[n])
	}
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
	cf.Config = v1.Config{Cmd: []string{"echo", "hello"}, Env: []string{"PATH=/bin"}, WorkingDir: "/w", ExposedPorts: map[string]struct{}{"8080/tcp": {}}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

func dockerSave(t *testing.T, img v1.Image, tag string) []byte {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(ref, img, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func serveOci(t *testing.T) (pb.OciImagesClient, *ociimage.Store) {
	t.Helper()
	st, err := ociimage.Open(context.Background(), filepath.Join(t.TempDir(), "oci"), ociimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterOciImagesServer(s, NewOciImages(st)) }, grpctest.UIDs()...)
	return pb.NewOciImagesClient(cc), st
}

// importChunks streams b to Import in small chunks.
func importChunks(ctx context.Context, c pb.OciImagesClient, h *pb.ImportOciImageHeader, b []byte) (*pb.ImportOciImageReply, error) {
	stream, err := c.Import(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.ImportOciImageMessage{Message: &pb.ImportOciImageMessage_Header{Header: h}}); err != nil {
		return nil, err
	}
	for len(b) > 0 {
		n := min(len(b), 7000)
		if err := stream.Send(&pb.ImportOciImageMessage{Message: &pb.ImportOciImageMessage_Chunk{Chunk: b[:n]}}); err != nil {
			break // the server's answer says why
		}
		b = b[n:]
	}
	return stream.CloseAndRecv()
}

func TestOciImagesImportListInspectRemove(t *testing.T) {
	c, _ := serveOci(t)
	root := grpctest.AsUID(0)
	b := dockerSave(t, ociTestImage(t, map[string]string{"bin/hello": "hi"}), "example.com/hello:v1")
	reply, err := importChunks(root, c, &pb.ImportOciImageHeader{Tag: "hello:extra"}, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(reply.GetImages()) != 1 || !slices.Equal(reply.Images[0].GetTags(), []string{"example.com/hello:v1", "index.docker.io/library/hello:extra"}) {
		t.Fatalf("reply %v", reply)
	}
	d := reply.Images[0].GetDigest()

	// Anyone may look.
	ls, err := c.List(grpctest.AsUID(1000), &pb.ListOciImagesRequest{})
	if err != nil || len(ls.GetImages()) != 1 || ls.Images[0].GetDigest() != d || ls.Images[0].GetSize() == 0 {
		t.Fatalf("List = %v, %v", ls, err)
	}
	det, err := c.Inspect(grpctest.AsUID(1000), &pb.InspectOciImageRequest{Reference: "hello:extra"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := det.GetConfig(); !slices.Equal(cfg.GetCmd(), []string{"echo", "hello"}) || cfg.GetWorkingDir() != "/w" ||
		!slices.Equal(cfg.GetExposedPorts(), []string{"8080/tcp"}) || det.GetOs() != "linux" || len(det.GetLayers()) != 1 {
		t.Errorf("Inspect = %v", det)
	}
	for ref, code := range map[string]codes.Code{"nope:v1": codes.NotFound, "sha256:12": codes.InvalidArgument, "": codes.InvalidArgument} {
		if _, err := c.Inspect(root, &pb.InspectOciImageRequest{Reference: ref}); status.Code(err) != code {
			t.Errorf("Inspect(%q) = %v, want %v", ref, err, code)
		}
	}

	// Only root changes the store.
	if _, err := importChunks(grpctest.AsUID(1000), c, &pb.ImportOciImageHeader{}, b); status.Code(err) != codes.PermissionDenied {
		t.Errorf("import by a user = %v", err)
	}
	if _, err := c.Remove(grpctest.AsUID(1000), &pb.RemoveOciImageRequest{Reference: d}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("remove by a user = %v", err)
	}
	rm, err := c.Remove(root, &pb.RemoveOciImageRequest{Reference: d})
	if err != nil || len(rm.GetRemoved()) != 3 {
		t.Fatalf("Remove = %v, %v", rm, err)
	}
	if _, err := c.Remove(root, &pb.RemoveOciImageRequest{Reference: d}); status.Code(err) != codes.NotFound {
		t.Errorf("second Remove = %v", err)
	}
}

func TestOciImagesImportRefusals(t *testing.T) {
	c, st := serveOci(t)
	root := grpctest.AsUID(0)
	// A layer escaping with "..": refused, nothing listed.
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "../../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	tw.Write([]byte("x"))
	tw.Close()
	l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(evil.Bytes())), nil })
	img, _ := mutate.AppendLayers(ociTestImage(t, map[string]string{"a": "a"}), l)
	if _, err := importChunks(root, c, &pb.ImportOciImageHeader{}, dockerSave(t, img, "evil:v1")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("escaping layer = %v", err)
	}
	if _, err := importChunks(root, c, &pb.ImportOciImageHeader{}, []byte("not a tarball")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("garbage = %v", err)
	}
	stream, _ := c.Import(root)
	stream.Send(&pb.ImportOciImageMessage{Message: &pb.ImportOciImageMessage_Chunk{Chunk: []byte("x")}})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no header = %v", err)
	}
	for path, code := range map[string]codes.Code{"relative.tar": codes.InvalidArgument, t.TempDir(): codes.InvalidArgument, "/nonexistent/x.tar": codes.InvalidArgument} {
		if _, err := importChunks(root, c, &pb.ImportOciImageHeader{Path: path}, nil); status.Code(err) != code {
			t.Errorf("path %q = %v, want %v", path, err, code)
		}
	}
	if imgs := st.List(context.Background()); len(imgs) != 0 {
		t.Errorf("listed after refusals: %v", imgs)
	}

	// A path cabind opens on the caller's behalf: root may, a user may
	// not read a root-only file.
	p := filepath.Join(t.TempDir(), "img.tar")
	if err := os.WriteFile(p, dockerSave(t, ociTestImage(t, map[string]string{"f": "f"}), "onhost:v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, err := importChunks(root, c, &pb.ImportOciImageHeader{Path: p}, nil); err != nil || len(r.GetImages()) != 1 {
		t.Errorf("import from a path = %v, %v", r, err)
	}
}

func TestOciImagesPull(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	img := ociTestImage(t, map[string]string{"big": string(bytes.Repeat([]byte{'x'}, 3<<20))})
	ref, _ := name.ParseReference(u.Host + "/team/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	c, _ := serveOci(t)
	stream, err := c.Pull(grpctest.AsUID(0), &pb.PullOciImageRequest{Reference: u.Host + "/team/app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	var last *pb.PullOciImageProgress
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = p
	}
	want, _ := img.Digest()
	if last.GetImage().GetDigest() != want.String() || !slices.Equal(last.GetImage().GetTags(), []string{u.Host + "/team/app:v1"}) {
		t.Errorf("last message %v", last)
	}
	for ref, code := range map[string]codes.Code{u.Host + "/team/none:v1": codes.NotFound, "Bad Ref": codes.InvalidArgument} {
		stream, err := c.Pull(grpctest.AsUID(0), &pb.PullOciImageRequest{Reference: ref})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != code {
			t.Errorf("pull %q = %v, want %v", ref, err, code)
		}
	}
	stream, _ = c.Pull(grpctest.AsUID(1000), &pb.PullOciImageRequest{Reference: u.Host + "/team/app:v1"})
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("pull by a user = %v", err)
	}
}
