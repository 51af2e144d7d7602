package cabinv1

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// Disks serves cabin.v1.Disks: the bytes of concierge's ExportDiskImage
// and ImportDiskImage, on a stream or through paths on cabind's host.
type Disks struct {
	pb.UnimplementedDisksServer
	d *diskimage.Store
	// stall bounds how long a streamed export or import waits on a
	// client that reads or sends nothing; zero takes diskimage's default
	// (tests shorten it).
	stall time.Duration
}

// NewDisks returns the Disks edge over d.
func NewDisks(d *diskimage.Store) *Disks { return &Disks{d: d} }

func format(f diskimage.Format) pb.DiskFormat {
	switch f {
	case diskimage.FormatRaw:
		return pb.DiskFormat_DISK_FORMAT_RAW
	case diskimage.FormatQcow2:
		return pb.DiskFormat_DISK_FORMAT_QCOW2
	}
	return pb.DiskFormat_DISK_FORMAT_UNSPECIFIED
}

func fromFormat(f pb.DiskFormat) diskimage.Format {
	switch f {
	case pb.DiskFormat_DISK_FORMAT_RAW:
		return diskimage.FormatRaw
	case pb.DiskFormat_DISK_FORMAT_QCOW2:
		return diskimage.FormatQcow2
	}
	return 0
}

func outcome(p diskimage.Progress) *pb.DiskOutcome {
	return &pb.DiskOutcome{Status: concierge.DiskProgress(p), Sha256: p.Digest}
}

func (s *Disks) Export(req *pb.ExportDiskRequest, stream grpc.ServerStreamingServer[pb.ExportDiskReply]) error {
	ctx := stream.Context()
	up := req.GetRequest()
	key, err := concierge.DiskKey(ctx, up.GetCryptohomeId(), up.GetVmName())
	if err != nil {
		return err
	}
	dreq := diskimage.ExportRequest{Key: key, Force: up.GetForce(), Digest: up.GetGenerateSha256Digest(), Stall: s.stall}
	refused := func(err error) error {
		st, reason, rpcErr := concierge.DiskFailure(err)
		if rpcErr != nil {
			return rpcErr
		}
		return stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Started{Started: &conciergepb.ExportDiskImageResponse{Status: st, FailureReason: reason}}})
	}
	started := func(op *diskimage.Op) error {
		return stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Started{Started: &conciergepb.ExportDiskImageResponse{
			Status: conciergepb.DiskImageStatus_DISK_STATUS_IN_PROGRESS, CommandUuid: op.UUID(),
		}}})
	}
	if req.GetPath() != "" {
		progress, unsubscribe := s.d.Subscribe()
		defer unsubscribe()
		op, err := s.d.ExportToFile(ctx, dreq, caller.FromContext(ctx), req.GetPath())
		if err != nil {
			return refused(err)
		}
		if err := started(op); err != nil {
			return err
		}
		return follow(ctx, op, progress, func(p diskimage.Progress) error {
			return stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Progress{Progress: concierge.DiskProgress(p)}})
		}, func(p diskimage.Progress) error {
			return stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Done{Done: outcome(p)}})
		})
	}
	var op *diskimage.Op
	_, err = s.d.Export(ctx, dreq, &streamSink{stream: stream}, func(o *diskimage.Op) {
		op = o
		// A send that fails ends the export at its first chunk.
		started(o)
	})
	if op == nil {
		return refused(err)
	}
	if errors.Is(err, diskimage.ErrBlocked) {
		// A Send the client does not take is still under way: returning
		// ends the stream, and so that Send; no other may start.
		return errgrpc.ToGRPC(err)
	}
	if ctx.Err() != nil {
		return errgrpc.ToGRPC(ctx.Err())
	}
	return stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Done{Done: outcome(op.Progress())}})
}

// follow sends op's progress as it comes, then its outcome; it returns
// early, leaving op running, when the client goes away.
func follow(ctx context.Context, op *diskimage.Op, progress <-chan diskimage.Progress, send, done func(diskimage.Progress) error) error {
	for {
		select {
		case <-ctx.Done():
			return errgrpc.ToGRPC(ctx.Err())
		case <-op.Done():
			return done(op.Progress())
		case p, ok := <-progress:
			if !ok {
				// Fell behind: the outcome is still told.
				progress = nil
				continue
			}
			if p.UUID == op.UUID() && p.Status == diskimage.StatusInProgress {
				if err := send(p); err != nil {
					return err
				}
			}
		}
	}
}

// streamSink sends an export on the stream. diskimage calls it from a
// goroutine of its own (see diskimage.Store.Export), one call at a time,
// and none once Export returned.
type streamSink struct {
	stream grpc.ServerStreamingServer[pb.ExportDiskReply]
}

func (s *streamSink) Begin(f diskimage.Format, size, data int64) error {
	return s.stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Header{Header: &pb.DiskHeader{
		Format: format(f), Size: uint64(size), DataBytes: uint64(data),
	}}})
}

func (s *streamSink) Write(c diskimage.Chunk) error {
	return s.stream.Send(&pb.ExportDiskReply{Reply: &pb.ExportDiskReply_Chunk{Chunk: &pb.DiskChunk{
		Offset: uint64(c.Offset), Data: c.Data,
	}}})
}

func (s *Disks) Import(stream grpc.BidiStreamingServer[pb.ImportDiskMessage, pb.ImportDiskReply]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("header", "the first message must be the header"))
	}
	up := h.GetRequest()
	key, err := concierge.DiskKey(ctx, up.GetCryptohomeId(), up.GetVmName())
	if err != nil {
		return err
	}
	loc, err := concierge.DiskLocation(up.GetStorageLocation())
	if err != nil {
		return err
	}
	dreq := diskimage.ImportRequest{
		Key: key, Location: loc, Format: fromFormat(h.GetFormat()),
		Size: int64(h.GetSize()), Data: int64(h.GetDataBytes()), Digest: h.GetSha256(),
		VMType: int32(up.GetVmType()), HasVMType: up.GetVmType() != conciergepb.VmInfo_UNKNOWN, Stall: s.stall,
	}
	if h.GetSize() > 1<<62 || h.GetDataBytes() > 1<<62 {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("size", "too large"))
	}
	refused := func(err error) error {
		st, reason, rpcErr := concierge.DiskFailure(err)
		if rpcErr != nil {
			return rpcErr
		}
		return stream.Send(&pb.ImportDiskReply{Reply: &pb.ImportDiskReply_Started{Started: &conciergepb.ImportDiskImageResponse{Status: st, FailureReason: reason}}})
	}
	started := func(op *diskimage.Op) error {
		return stream.Send(&pb.ImportDiskReply{Reply: &pb.ImportDiskReply_Started{Started: &conciergepb.ImportDiskImageResponse{
			Status: conciergepb.DiskImageStatus_DISK_STATUS_IN_PROGRESS, CommandUuid: op.UUID(),
		}}})
	}
	sendProgress := func(p diskimage.Progress) error {
		return stream.Send(&pb.ImportDiskReply{Reply: &pb.ImportDiskReply_Progress{Progress: concierge.DiskProgress(p)}})
	}
	sendDone := func(p diskimage.Progress) error {
		return stream.Send(&pb.ImportDiskReply{Reply: &pb.ImportDiskReply_Done{Done: outcome(p)}})
	}
	if h.GetPath() != "" {
		if dreq.Format == 0 {
			return errgrpc.ToGRPC(errdefs.InvalidArgument("format", "must be raw or qcow2: cabin never guesses an image's format"))
		}
		progress, unsubscribe := s.d.Subscribe()
		defer unsubscribe()
		op, err := s.d.ImportFromFile(ctx, dreq, caller.FromContext(ctx), h.GetPath())
		if err != nil {
			return refused(err)
		}
		if err := started(op); err != nil {
			return err
		}
		return follow(ctx, op, progress, sendProgress, sendDone)
	}
	src := &streamSource{stream: stream, progress: sendProgress}
	var op *diskimage.Op
	_, err = s.d.Import(ctx, dreq, src, func(o *diskimage.Op) {
		op, src.op = o, o
		started(o)
	})
	if op == nil {
		return refused(err)
	}
	if errors.Is(err, diskimage.ErrBlocked) {
		// A Recv (or a progress Send) is still under way: returning ends
		// the stream, and so that call; no other may start.
		return errgrpc.ToGRPC(err)
	}
	if ctx.Err() != nil {
		return errgrpc.ToGRPC(ctx.Err())
	}
	return sendDone(op.Progress())
}

// streamSource reads an import's chunks from the stream, and sends the
// import's progress as it goes. diskimage calls it from a goroutine of its
// own (see diskimage.Store.Import), one call at a time, and none once
// Import returned.
type streamSource struct {
	stream   grpc.BidiStreamingServer[pb.ImportDiskMessage, pb.ImportDiskReply]
	op       *diskimage.Op
	progress func(diskimage.Progress) error
	sent     uint32
}

func (s *streamSource) Next() (diskimage.Chunk, error) {
	if s.op != nil {
		if p := s.op.Progress(); p.Percent != s.sent {
			s.sent = p.Percent
			if err := s.progress(p); err != nil {
				return diskimage.Chunk{}, err
			}
		}
	}
	m, err := s.stream.Recv()
	if err != nil {
		return diskimage.Chunk{}, err
	}
	c := m.GetChunk()
	if c == nil {
		return diskimage.Chunk{}, errdefs.InvalidArgument("chunk", "only chunks may follow the header")
	}
	if c.GetOffset() > 1<<62 {
		return diskimage.Chunk{}, errdefs.InvalidArgument("offset", "too large")
	}
	return diskimage.Chunk{Offset: int64(c.GetOffset()), Data: c.GetData()}, nil
}
