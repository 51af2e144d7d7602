package cabinv1

import (
	"bytes"
	"errors"
	"io"
	"math"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// importStream is a client's Import stream after its header: the given
// messages, then the end.
type importStream struct {
	grpc.ServerStream
	msgs []*pb.ImportDiskMessage
}

func (s *importStream) Recv() (*pb.ImportDiskMessage, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

func (s *importStream) Send(*pb.ImportDiskReply) error { return nil }

// FuzzImportChunk reads arbitrary bytes as the wire form of a message
// that follows an Import's header, and has streamSource.Next make it a
// chunk of the image. Only a chunk is taken, at an offset of at most
// 2^62, unchanged (so that no offset plus a message's length overflows in
// diskimage); anything else is an invalid argument. The stream's end is
// the import's end.
func FuzzImportChunk(f *testing.F) {
	for _, m := range []*pb.ImportDiskMessage{
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 0, Data: []byte("QFI\xfb\x00\x00\x00\x03")}}},
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 1 << 20, Data: bytes.Repeat([]byte{0x55}, 4096)}}},
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 1 << 62, Data: []byte{1}}}},
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: 1<<62 + 1}}},
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{Offset: math.MaxUint64, Data: []byte{1}}}},
		{Message: &pb.ImportDiskMessage_Chunk{Chunk: &pb.DiskChunk{}}},
		{Message: &pb.ImportDiskMessage_Header{Header: &pb.ImportDiskHeader{
			Request: &conciergepb.ImportDiskImageRequest{VmName: "dev"}, Format: pb.DiskFormat_DISK_FORMAT_RAW, Size: 1 << 30,
		}}},
		{},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m pb.ImportDiskMessage
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		src := &streamSource{stream: &importStream{msgs: []*pb.ImportDiskMessage{&m}}}
		c, err := src.Next()
		if pc := m.GetChunk(); pc == nil || pc.GetOffset() > 1<<62 {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%v taken as %d bytes at %d, %v", &m, len(c.Data), c.Offset, err)
			}
		} else {
			switch {
			case err != nil:
				t.Fatalf("%v refused: %v", &m, err)
			case c.Offset < 0 || uint64(c.Offset) != pc.GetOffset() || !bytes.Equal(c.Data, pc.GetData()):
				t.Fatalf("%v taken as %d bytes at %d", &m, len(c.Data), c.Offset)
			case c.Offset > math.MaxInt64-int64(len(c.Data)):
				t.Fatalf("%d bytes at %d overflow", len(c.Data), c.Offset)
			}
		}
		if _, err := src.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last message: %v", err)
		}
	})
}
