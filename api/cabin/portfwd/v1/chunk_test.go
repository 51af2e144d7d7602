package portfwdv1

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestMaxChunkFitsGRPCPoolClass(t *testing.T) {
	data := bytes.Repeat([]byte{0xff}, MaxChunk)
	for _, m := range []proto.Message{
		&GuestPortRequest{Kind: &GuestPortRequest_Data{Data: data}},
		&GuestPortResponse{Kind: &GuestPortResponse_Data{Data: data}},
	} {
		if n := proto.Size(m); n > 32<<10 {
			t.Errorf("%T with a full chunk encodes to %d bytes, over 32 KiB", m, n)
		}
	}
}
