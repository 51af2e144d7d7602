package cabinv1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/guestimage"
)

// fakeBuilder records which of the builder's calls the service made.
type fakeBuilder struct {
	calls []string
	err   error
}

func (f *fakeBuilder) Ensure(_ context.Context, progress func(guestimage.Progress)) (guestimage.Image, error) {
	f.calls = append(f.calls, "ensure")
	progress(guestimage.Progress{Step: "building the initramfs"})
	return guestimage.Image{KernelVersion: "6.1.0-56-amd64 (6.1.192-2)", InitramfsBytes: 42, Built: true}, f.err
}

func (f *fakeBuilder) Build(_ context.Context, force bool, progress func(guestimage.Progress)) (guestimage.Image, error) {
	if force {
		f.calls = append(f.calls, "build force")
	} else {
		f.calls = append(f.calls, "build")
	}
	progress(guestimage.Progress{Step: "checking apt for the guest kernel"})
	progress(guestimage.Progress{Step: "downloading k", Done: 5, Total: 10})
	return guestimage.Image{KernelVersion: "6.1.0-57-amd64 (6.1.193-1)"}, f.err
}

// buildImage serves b as cabin.v1.Images and makes one Build call,
// returning the progress steps, the final image and the call's error.
func buildImage(t *testing.T, b imageBuilder, req *pb.BuildImageRequest) ([]string, *pb.ImageInfo, error) {
	t.Helper()
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterImagesServer(s, &Images{b: b}) })
	stream, err := pb.NewImagesClient(cc).Build(t.Context(), req)
	if err != nil {
		return nil, nil, err
	}
	var steps []string
	var img *pb.ImageInfo
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return steps, img, nil
		}
		if err != nil {
			return steps, img, err
		}
		step := p.GetStep()
		if p.GetTotalBytes() != 0 || p.GetDoneBytes() != 0 {
			step += fmt.Sprintf(" %d/%d", p.GetDoneBytes(), p.GetTotalBytes())
		}
		steps = append(steps, step)
		if p.GetImage() != nil {
			img = p.GetImage()
		}
	}
}

func TestImagesBuildEnsureUsesTheCache(t *testing.T) {
	b := &fakeBuilder{}
	steps, img, err := buildImage(t, b, &pb.BuildImageRequest{Ensure: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(b.calls, ",") != "ensure" {
		t.Errorf("builder calls %q, want only Ensure: ensure must not ask apt for a newer kernel", b.calls)
	}
	if strings.Join(steps, ",") != "building the initramfs,done" {
		t.Errorf("steps %q, want Ensure's progress then done", steps)
	}
	if img.GetKernelVersion() != "6.1.0-56-amd64 (6.1.192-2)" || img.GetInitrdBytes() != 42 || !img.GetBuilt() {
		t.Errorf("image %v, want Ensure's", img)
	}
}

func TestImagesBuildWithoutEnsure(t *testing.T) {
	for _, tc := range []struct {
		req  *pb.BuildImageRequest
		want string
	}{
		{&pb.BuildImageRequest{}, "build"},
		{&pb.BuildImageRequest{Force: true}, "build force"},
	} {
		b := &fakeBuilder{}
		steps, img, err := buildImage(t, b, tc.req)
		if err != nil {
			t.Fatalf("%v: %v", tc.req, err)
		}
		if strings.Join(b.calls, ",") != tc.want {
			t.Errorf("%v: builder calls %q, want %q", tc.req, b.calls, tc.want)
		}
		if strings.Join(steps, ",") != "checking apt for the guest kernel,downloading k 5/10,done" || img.GetKernelVersion() != "6.1.0-57-amd64 (6.1.193-1)" {
			t.Errorf("%v: steps %q, image %v", tc.req, steps, img)
		}
	}
}

func TestImagesBuildForceAndEnsure(t *testing.T) {
	b := &fakeBuilder{}
	_, _, err := buildImage(t, b, &pb.BuildImageRequest{Force: true, Ensure: true})
	if s := status.Convert(err); s.Code() != codes.InvalidArgument || !strings.HasPrefix(s.Message(), "ensure: ") ||
		!strings.Contains(s.Message(), "force") {
		t.Errorf("force and ensure: %v, want INVALID_ARGUMENT naming both", err)
	}
	if len(b.calls) != 0 {
		t.Errorf("builder called %q on an invalid request", b.calls)
	}
}

func TestImagesBuildEnsureError(t *testing.T) {
	b := &fakeBuilder{err: errors.Join(errors.New("guest kernel: apt-cache failed"), errdefs.ErrUnavailable)}
	_, img, err := buildImage(t, b, &pb.BuildImageRequest{Ensure: true})
	if s := status.Convert(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "apt-cache failed") {
		t.Errorf("got %v, want the builder's error as UNAVAILABLE", err)
	}
	if img != nil {
		t.Errorf("an image %v after a failed build", img)
	}
}
