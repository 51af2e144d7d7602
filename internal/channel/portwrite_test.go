package channel

import (
	"bytes"
	"testing"
)

// A frame larger than a port write goes as the header with the start of
// its body, one whole port write, then the rest of the body uncopied: the
// bytes on the wire are the frame's, in order.
func TestCoalesceSplitsLargeFrameAtPortWrite(t *testing.T) {
	for _, size := range []int{portWrite - headerSize, portWrite - headerSize + 1, portWrite, streamWriteBuffer, 3*portWrite + 7} {
		rec := &recorder{}
		c := coalesce(rec)
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i * 7)
		}
		if n, err := c.Write(header(typeData, uint32(size))); err != nil || n != headerSize {
			t.Fatalf("%d: header write = %d, %v", size, n, err)
		}
		if n, err := c.Write(body); err != nil || n != size {
			t.Fatalf("%d: body write = %d, %v", size, n, err)
		}
		want := append(header(typeData, uint32(size)), body...)
		if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, want) {
			t.Fatalf("%d: the writes do not make the frame", size)
		}
		if len(rec.writes[0]) != min(len(want), portWrite) {
			t.Errorf("%d: first write %d bytes, want %d", size, len(rec.writes[0]), min(len(want), portWrite))
		}
		writes := 1
		if size+headerSize > portWrite {
			writes = 2
		}
		if len(rec.writes) != writes {
			t.Errorf("%d: %d writes, want %d", size, len(rec.writes), writes)
		}
	}
}

// gRPC's writes to a stream fill whole port writes once yamux's header is
// in front.
func TestStreamWriteBufferFillsPortWrites(t *testing.T) {
	if (streamWriteBuffer+headerSize)%portWrite != 0 {
		t.Fatalf("a full buffer and its header are %d bytes, not whole port writes of %d", streamWriteBuffer+headerSize, portWrite)
	}
}
