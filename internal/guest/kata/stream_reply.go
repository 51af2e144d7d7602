package kata

import (
	"context"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/unary"
)

// readStreamData is the number of ReadStreamResponse's one field, data
// (a test checks it against the descriptor). A constant: looking it up
// at start-up would build the Kata API's descriptors in every agent,
// which then costs ~300 KiB of RSS before any Kata call comes.
const readStreamData protowire.Number = 1

// readStream answers ReadStdout and ReadStderr. On the unary port the
// reply is written from the chunk the output was read into, its envelope
// in the chunk's room, and the chunk is reused once the reply is written
// (decisions §35); through gRPC the bytes are encoded as usual and the
// chunk is left to the garbage collector.
func (v *Service) readStream(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) (*pb.ReadStreamResponse, error) {
	c, err := v.s.readOutput(ctx, req.GetContainerId(), req.GetExecId(), stderr, int(req.GetLen()))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if c.b == nil {
		return &pb.ReadStreamResponse{}, nil
	}
	resp := &pb.ReadStreamResponse{Data: c.bytes()}
	unary.ReplyInPlace(ctx, resp, readStreamData, c.b[:c.end], c.off, c.release)
	return resp, nil
}
