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
	var cs []chunk
	if n := int(req.GetLen()); n > maxRead {
		var err error
		if cs, err = v.s.readOutputChunks(ctx, req.GetContainerId(), req.GetExecId(), stderr, n); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	} else {
		c, err := v.s.readOutput(ctx, req.GetContainerId(), req.GetExecId(), stderr, n)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		if c.b != nil {
			cs = []chunk{c}
		}
	}
	return replyChunks(ctx, cs), nil
}

// replyChunks is the reply holding cs's bytes, none at the end: on the
// unary port written from the chunks themselves, envelope in the first
// one's room; otherwise with the bytes in the message (copied when there
// are several chunks).
func replyChunks(ctx context.Context, cs []chunk) *pb.ReadStreamResponse {
	resp := &pb.ReadStreamResponse{}
	switch len(cs) {
	case 0:
		return resp
	case 1:
		c := cs[0]
		resp.Data = c.bytes()
		unary.ReplyInPlace(ctx, resp, readStreamData, c.b[:c.end], c.off, c.release)
		return resp
	}
	more := make([][]byte, len(cs)-1)
	for i := range more {
		more[i] = cs[i+1].bytes()
	}
	release := func() {
		for i := range cs {
			cs[i].release()
		}
	}
	if !unary.ReplyInPlaceChunks(ctx, resp, readStreamData, cs[0].b[:cs[0].end], cs[0].off, more, release) {
		for _, c := range cs {
			resp.Data = append(resp.Data, c.bytes()...)
		}
	}
	return resp
}
