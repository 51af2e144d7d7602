package cabinv1

import (
	"errors"
	"io"

	"google.golang.org/grpc"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/vmm"
)

// maxLogChunk is the most log bytes one LogsChunk carries. The message
// then encodes to at most 32 KiB, which gRPC's buffer pools serve from
// their 32 KiB class; a few bytes more and each message would take a
// 1 MiB buffer at both ends (as api/cabin/exec/v1.MaxChunk).
const maxLogChunk = 32<<10 - 16

// Logs streams a VM's console log: the domain reads and follows it
// (vmm.OpenLog); this only cuts it into messages.
func (s *Vms) Logs(req *pb.LogsRequest, stream grpc.ServerStreamingServer[pb.LogsChunk]) error {
	opts := vmm.LogOptions{TailLines: -1, Follow: req.GetFollow()}
	if req.TailLines != nil {
		opts.TailLines = int(req.GetTailLines())
	}
	ctx := stream.Context()
	// A caller other than root reads its own VMs' logs only.
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	r, err := s.m.OpenLog(vmm.Key{Owner: owner, Name: req.GetName()}, opts)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer r.Close()
	for {
		// A fresh buffer per message: gRPC may hold on to a message it
		// was given after Send returns.
		buf := make([]byte, maxLogChunk)
		n, err := r.Read(ctx, buf)
		if n > 0 {
			if err := stream.Send(&pb.LogsChunk{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return errgrpc.ToGRPC(err)
		}
	}
}
