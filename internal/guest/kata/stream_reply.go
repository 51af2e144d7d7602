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
// (decisions §35); a call asking for more than maxRead, as cabind's read
// ahead does, is answered from up to four chunks, one port write each
// (§38). Through gRPC the bytes are encoded as usual and the chunks are
// left to the garbage collector.
func (v *Service) readStream(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) (*pb.ReadStreamResponse, error) {
	if n := int(req.GetLen()); n > maxRead {
		return v.readStreamChunks(ctx, req, stderr, n)
	}
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

// readStreamChunks answers a read of up to n bytes, n more than maxRead.
func (v *Service) readStreamChunks(ctx context.Context, req *pb.ReadStreamRequest, stderr bool, n int) (*pb.ReadStreamResponse, error) {
	cs, err := v.s.readOutputChunks(ctx, req.GetContainerId(), req.GetExecId(), stderr, n)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if len(cs) == 0 {
		return &pb.ReadStreamResponse{}, nil
	}
	resp := &pb.ReadStreamResponse{}
	more := make([][]byte, len(cs)-1)
	for i := range more {
		more[i] = cs[i+1].bytes()
	}
	release := func() {
		for i := range cs {
			cs[i].release()
		}
	}
	if len(cs) == 1 {
		resp.Data = cs[0].bytes()
	}
	if !unary.ReplyInPlaceChunks(ctx, resp, readStreamData, cs[0].b[:cs[0].end], cs[0].off, more, release) && len(cs) > 1 {
		data := make([]byte, 0, n)
		for _, c := range cs {
			data = append(data, c.bytes()...)
		}
		resp.Data = data
	}
	return resp, nil
}
