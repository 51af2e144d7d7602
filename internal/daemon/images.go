package daemon

import (
	"context"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/image"
	"github.com/cabinvm/cabin/internal/vmm"
)

// imageBuilder is what the Images service needs of *image.Builder.
type imageBuilder interface {
	// Ensure builds only when the cached image is missing or stale, and
	// asks apt for newer packages only when its lists changed.
	Ensure(ctx context.Context, progress func(step string)) (image.Image, error)
	// Build always asks apt, and fails when it cannot build.
	Build(ctx context.Context, force bool, progress func(step string)) (image.Image, error)
}

var _ imageBuilder = (*image.Builder)(nil)

// imagesServer serves cabin.v1.Images.
type imagesServer struct {
	cabinv1.UnimplementedImagesServer
	b imageBuilder
}

func (s *imagesServer) Build(req *cabinv1.BuildImageRequest, stream grpc.ServerStreamingServer[cabinv1.BuildImageProgress]) error {
	if req.GetForce() && req.GetEnsure() {
		return errdefs.ToGRPC(errdefs.InvalidArgument("ensure",
			"cannot be combined with force: ensure reuses a current cached image, force rebuilds it"))
	}
	// The builder reports progress from the calling goroutine, so Send is
	// never called concurrently.
	var sendErr error
	progress := func(step string) {
		if sendErr == nil {
			sendErr = stream.Send(&cabinv1.BuildImageProgress{Step: step})
		}
	}
	var (
		img image.Image
		err error
	)
	if req.GetEnsure() {
		img, err = s.b.Ensure(stream.Context(), progress)
	} else {
		img, err = s.b.Build(stream.Context(), req.GetForce(), progress)
	}
	if err != nil {
		return errdefs.ToGRPC(err)
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&cabinv1.BuildImageProgress{Step: "done", Image: &cabinv1.ImageInfo{
		KernelVersion: img.KernelVersion,
		KernelPath:    img.Kernel,
		InitrdPath:    img.Initramfs,
		InitrdBytes:   img.InitramfsBytes,
		AgentSha256:   img.AgentSHA256,
		Built:         img.Built,
	}})
}

// imageSource gives the manager the builder's image.
type imageSource struct{ b *image.Builder }

func (s imageSource) Ensure(ctx context.Context, progress func(string)) (vmm.Image, error) {
	img, err := s.b.Ensure(ctx, progress)
	if err != nil {
		return vmm.Image{}, err
	}
	return vmm.Image{Kernel: img.Kernel, Initrd: img.Initramfs, Rootfs: img.Rootfs}, nil
}

func (s imageSource) Rootfs(ctx context.Context, progress func(string)) (string, error) {
	return s.b.Rootfs(ctx, progress)
}
