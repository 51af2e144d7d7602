package cabinv1

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/ociimage"
)

// ociStore is what the OciImages service needs of *ociimage.Store.
type ociStore interface {
	ImportReader(ctx context.Context, r io.Reader, opts ociimage.ImportOptions) ([]ociimage.Digest, error)
	ImportPath(ctx context.Context, c *caller.Caller, path string, opts ociimage.ImportOptions) ([]ociimage.Digest, error)
	Pull(ctx context.Context, ref string, opts ociimage.PullOptions) (ociimage.Digest, error)
	List(ctx context.Context) []ociimage.Image
	Inspect(ctx context.Context, ref string) (ociimage.Details, error)
	Remove(ctx context.Context, ref string) ([]string, error)
}

var _ ociStore = (*ociimage.Store)(nil)

// OciImages serves cabin.v1.OciImages.
type OciImages struct {
	pb.UnimplementedOciImagesServer
	s ociStore
}

// NewOciImages returns the OciImages edge over the image store.
func NewOciImages(s *ociimage.Store) *OciImages { return &OciImages{s: s} }

// mayChange refuses a caller other than root: the store and its tags are
// every user's, so one user's import could otherwise name what another
// runs.
func mayChange(ctx context.Context, what string) error {
	if caller.FromContext(ctx).Trusted() {
		return nil
	}
	return errgrpc.ToGRPC(errdefs.Errorf(errdefs.ErrPermissionDenied,
		"%s is root's: the image store and its tags are shared by every user of cabind", what))
}

func (s *OciImages) Import(stream grpc.ClientStreamingServer[pb.ImportOciImageMessage, pb.ImportOciImageReply]) error {
	ctx := stream.Context()
	if err := mayChange(ctx, "importing an image"); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("header", "the first message must be the header"))
	}
	opts := ociimage.ImportOptions{Tag: h.GetTag()}
	var ds []ociimage.Digest
	if h.GetPath() != "" {
		ds, err = s.s.ImportPath(ctx, caller.FromContext(ctx), h.GetPath(), opts)
	} else {
		ds, err = s.s.ImportReader(ctx, &chunkReader{stream: stream}, opts)
	}
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	reply := &pb.ImportOciImageReply{}
	for _, d := range ds {
		img, err := s.image(ctx, d)
		if err != nil {
			return err
		}
		reply.Images = append(reply.Images, img)
	}
	return stream.SendAndClose(reply)
}

// chunkReader reads an import's chunks until the client closes its side.
type chunkReader struct {
	stream grpc.ClientStreamingServer[pb.ImportOciImageMessage, pb.ImportOciImageReply]
	buf    []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		m, err := r.stream.Recv()
		if err != nil {
			return 0, err // io.EOF: the client is done
		}
		if m.GetHeader() != nil {
			return 0, errdefs.InvalidArgument("chunk", "only chunks may follow the header")
		}
		r.buf = m.GetChunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (s *OciImages) Pull(req *pb.PullOciImageRequest, stream grpc.ServerStreamingServer[pb.PullOciImageProgress]) error {
	ctx := stream.Context()
	if err := mayChange(ctx, "pulling an image"); err != nil {
		return err
	}
	// The store reports progress from the calling goroutine, so Send is
	// never called concurrently; a message per MiB is plenty.
	var sendErr error
	var sent, done int64 = -1, 0
	progress := func(p ociimage.Progress) {
		done = p.Done
		if sendErr == nil && (p.Done-sent >= 1<<20 || p.Done == p.Total) && p.Done != sent {
			sent = p.Done
			sendErr = stream.Send(&pb.PullOciImageProgress{DoneBytes: p.Done, TotalBytes: p.Total})
		}
	}
	d, err := s.s.Pull(ctx, req.GetReference(), ociimage.PullOptions{ImportOptions: ociimage.ImportOptions{Progress: progress}})
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	if sendErr != nil {
		return sendErr
	}
	img, err := s.image(ctx, d)
	if err != nil {
		return err
	}
	return stream.Send(&pb.PullOciImageProgress{DoneBytes: done, TotalBytes: done, Image: img})
}

func (s *OciImages) List(ctx context.Context, _ *pb.ListOciImagesRequest) (*pb.ListOciImagesResponse, error) {
	out := &pb.ListOciImagesResponse{}
	for _, img := range s.s.List(ctx) {
		out.Images = append(out.Images, toOciImage(img))
	}
	return out, nil
}

func (s *OciImages) Inspect(ctx context.Context, req *pb.InspectOciImageRequest) (*pb.OciImageDetails, error) {
	det, err := s.s.Inspect(ctx, req.GetReference())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c := det.Config
	out := &pb.OciImageDetails{
		Image: toOciImage(det.Image), Os: det.OS, Architecture: det.Architecture,
		Config: &pb.OciImageConfig{
			Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, User: c.User, WorkingDir: c.WorkingDir,
			ExposedPorts: c.ExposedPorts, Labels: c.Labels, StopSignal: c.StopSignal,
		},
	}
	for _, l := range det.Layers {
		out.Layers = append(out.Layers, &pb.OciImageLayer{Digest: string(l.Digest), Size: l.Size})
	}
	return out, nil
}

func (s *OciImages) Remove(ctx context.Context, req *pb.RemoveOciImageRequest) (*pb.RemoveOciImageResponse, error) {
	if err := mayChange(ctx, "removing an image"); err != nil {
		return nil, err
	}
	removed, err := s.s.Remove(ctx, req.GetReference())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.RemoveOciImageResponse{Removed: removed}, nil
}

// image describes the image d names, just imported or pulled.
func (s *OciImages) image(ctx context.Context, d ociimage.Digest) (*pb.OciImage, error) {
	det, err := s.s.Inspect(ctx, string(d))
	if errors.Is(err, errdefs.ErrNotFound) {
		// Removed between the import and this look: say what is known.
		return &pb.OciImage{Digest: string(d)}, nil
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return toOciImage(det.Image), nil
}

func toOciImage(img ociimage.Image) *pb.OciImage {
	out := &pb.OciImage{Digest: string(img.Digest), Tags: img.Tags, Size: img.Size, UnpackedSize: img.Unpacked}
	if !img.Created.IsZero() {
		out.Created = timestamppb.New(img.Created)
	}
	return out
}
