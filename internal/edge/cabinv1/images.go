package cabinv1

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guestimage"
)

// imageBuilder is what the Images service needs of *guestimage.Builder.
type imageBuilder interface {
	// Ensure builds only when the cached image is missing or stale, and
	// asks apt for newer packages only when its lists changed.
	Ensure(ctx context.Context, progress func(guestimage.Progress)) (guestimage.Image, error)
	// Build always asks apt, and fails when it cannot build.
	Build(ctx context.Context, force bool, progress func(guestimage.Progress)) (guestimage.Image, error)
}

var _ imageBuilder = (*guestimage.Builder)(nil)

// Images serves cabin.v1.Images.
type Images struct {
	pb.UnimplementedImagesServer
	b imageBuilder
}

// NewImages returns the Images edge over the guest image builder.
func NewImages(b *guestimage.Builder) *Images { return &Images{b: b} }

func (s *Images) Build(req *pb.BuildImageRequest, stream grpc.ServerStreamingServer[pb.BuildImageProgress]) error {
	if !req.GetEnsure() && !caller.FromContext(stream.Context()).Trusted() {
		// The image is every user's VMs': a user may have it made when
		// there is none, as a VM start does, but not made anew.
		return errgrpc.ToGRPC(errdefs.Errorf(errdefs.ErrPermissionDenied,
			"building the guest image anew is root's: it is shared by every user's VMs (ensure is allowed)"))
	}
	if req.GetForce() && req.GetEnsure() {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("ensure",
			"cannot be combined with force: ensure reuses a current cached image, force rebuilds it"))
	}
	// The builder reports progress from the calling goroutine, so Send is
	// never called concurrently.
	var sendErr error
	progress := func(p guestimage.Progress) {
		if sendErr == nil {
			sendErr = stream.Send(&pb.BuildImageProgress{Step: p.Step, DoneBytes: p.Done, TotalBytes: p.Total})
		}
	}
	var (
		img guestimage.Image
		err error
	)
	if req.GetEnsure() {
		img, err = s.b.Ensure(stream.Context(), progress)
	} else {
		img, err = s.b.Build(stream.Context(), req.GetForce(), progress)
	}
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&pb.BuildImageProgress{Step: "done", Image: &pb.ImageInfo{
		KernelVersion: img.KernelVersion,
		KernelPath:    img.Kernel,
		InitrdPath:    img.Initramfs,
		InitrdBytes:   img.InitramfsBytes,
		AgentSha256:   img.AgentSHA256,
		Built:         img.Built,
	}})
}
