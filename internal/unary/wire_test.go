package unary

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
)

// sampleFrames covers every field, zero values, and values whose encoding
// has an edge: negative numbers, empty repeated bytes, non-ASCII text.
func sampleFrames(t testing.TB) []*channelv1.Frame {
	detail, err := anypb.New(&errdetails.ErrorInfo{Reason: "R", Domain: "cabin", Metadata: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	return []*channelv1.Frame{
		{},
		{Call: &channelv1.Call{}},
		{Reply: &channelv1.Reply{}},
		{Cancel: &channelv1.Cancel{}},
		{Cancel: &channelv1.Cancel{Id: 1 << 63}},
		{Call: &channelv1.Call{
			Id: 42, Method: "/vm_tools.Maitred/GetKernelVersion", TimeoutNanos: 30e9, Payload: []byte{0, 1, 2, 0xff},
			Metadata: []*channelv1.Metadata{
				{Key: "x", Values: [][]byte{[]byte("a"), {}, []byte("c")}},
				{Key: "t-bin", Values: [][]byte{{0, 0xff}}},
				{Key: "", Values: nil},
			},
		}},
		{Call: &channelv1.Call{Id: 1, Method: "/sérvice/Méthode", TimeoutNanos: -1}},
		{Reply: &channelv1.Reply{
			Id: 7, Payload: bytes.Repeat([]byte{'p'}, 300), Code: 9, Message: "précondition",
			Details: []*anypb.Any{detail, detail},
			Header:  []*channelv1.Metadata{{Key: "h", Values: [][]byte{[]byte("1")}}},
			Trailer: []*channelv1.Metadata{{Key: "t", Values: [][]byte{[]byte("2"), []byte("3")}}},
		}},
		{Reply: &channelv1.Reply{Id: 8, Code: -5}},
		{Call: &channelv1.Call{Id: 1}, Reply: &channelv1.Reply{Id: 2}, Cancel: &channelv1.Cancel{Id: 3}},
	}
}

// TestFrameEncodingMatchesProtobuf checks the hand-written codec against
// the protobuf library: the same bytes out, the same message back in.
func TestFrameEncodingMatchesProtobuf(t *testing.T) {
	for i, f := range sampleFrames(t) {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendFrame(nil, f)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("frame %d encodes to\n%x\nprotobuf:\n%x", i, got, want)
		}
		back := new(channelv1.Frame)
		if err := decodeFrame(want, back); err != nil {
			t.Fatalf("frame %d: decode: %v", i, err)
		}
		if !proto.Equal(back, f) {
			t.Errorf("frame %d decodes to %v, want %v", i, back, f)
		}
	}
}

func TestDecodeFrameCopiesBytes(t *testing.T) {
	f := &channelv1.Frame{Call: &channelv1.Call{Payload: []byte("payload"),
		Metadata: []*channelv1.Metadata{{Key: "k", Values: [][]byte{[]byte("value")}}}}}
	b, _ := appendFrame(nil, f)
	got := new(channelv1.Frame)
	if err := decodeFrame(b, got); err != nil {
		t.Fatal(err)
	}
	clear(b) // the reader reuses its buffer
	if !proto.Equal(got, f) {
		t.Errorf("after the buffer was reused: %v", got)
	}
}

func TestDecodeFrameRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"truncated tag":      {0x80},
		"truncated length":   {0x0a, 0x05, 0x08},
		"field number zero":  {0x02, 0x00},
		"bad utf-8 method":   {0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28},
		"bad utf-8 metadata": {0x12, 0x06, 0x32, 0x04, 0x0a, 0x02, 0xff, 0xfe},
		"bad detail":         {0x12, 0x04, 0x2a, 0x02, 0x0a, 0x05},
	} {
		if err := decodeFrame(b, new(channelv1.Frame)); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
		if err := proto.Unmarshal(b, new(channelv1.Frame)); err == nil {
			t.Errorf("%s: protobuf accepts it, so should this codec", name)
		}
	}
}

// FuzzDecodeFrame decodes arbitrary bytes both ways: this codec accepts
// exactly what protobuf accepts and reads the same message (unknown fields
// aside, which neither side keeps here); what it decodes encodes back to
// the same message.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range sampleFrames(f) {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0x02, 0x08, 0x01, 0x0a, 0x02, 0x10, 0x02}) // a message field twice: merged
	f.Add([]byte{0x0a, 0x03, 0x15, 0x01, 0x02})                   // a known field of the wrong wire type
	f.Fuzz(func(t *testing.T, b []byte) {
		want := new(channelv1.Frame)
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, want)
		got := new(channelv1.Frame)
		gerr := decodeFrame(b, got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("protobuf: %v, this codec: %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		if !proto.Equal(got, want) {
			t.Fatalf("decoded %v, protobuf %v", got, want)
		}
		again, err := appendFrame(nil, got)
		if err != nil {
			t.Fatal(err)
		}
		back := new(channelv1.Frame)
		if err := proto.Unmarshal(again, back); err != nil || !proto.Equal(back, got) {
			t.Fatalf("re-encoded %v reads back as %v, %v", got, back, err)
		}
	})
}

// TestDecodeFrameInternsMethods checks that a method name the interner
// knows is taken from it, saving an allocation per call, and that other
// names decode (and are checked) as before.
func TestDecodeFrameInternsMethods(t *testing.T) {
	const known = "/vm_tools.Maitred/GetKernelVersion"
	intern := func(b []byte) (string, bool) {
		if string(b) == known {
			return known, true
		}
		return "", false
	}
	encode := func(method string) []byte {
		b, err := appendFrame(nil, &channelv1.Frame{Call: &channelv1.Call{Id: 3, Method: method}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, method := range []string{known, "/other.Service/Method"} {
		got := new(channelv1.Frame)
		if err := decodeFrameInterning(encode(method), got, intern); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if got.GetCall().GetMethod() != method || got.GetCall().GetId() != 3 {
			t.Errorf("%s: decoded %v", method, got)
		}
	}
	b := encode(known)
	allocs := func(intern interner) float64 {
		return testing.AllocsPerRun(100, func() {
			if err := decodeFrameInterning(b, new(channelv1.Frame), intern); err != nil {
				t.Fatal(err)
			}
		})
	}
	if with, without := allocs(intern), allocs(nil); with != without-1 {
		t.Errorf("decoding a known method allocates %v times, an unknown one %v: want one less", with, without)
	}
	bad := []byte{0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28}
	if err := decodeFrameInterning(bad, new(channelv1.Frame), intern); err == nil {
		t.Error("a method name that is not UTF-8 decoded without an error")
	}
}

// interruptedReader hands out data a few bytes at a time and fails once
// with a deadline error when it reaches cut, as a read deadline does.
type interruptedReader struct {
	data     []byte
	cut      int
	pos      int
	failed   bool
	maxChunk int
}

func (r *interruptedReader) Read(p []byte) (int, error) {
	if !r.failed && r.pos == r.cut {
		r.failed = true
		return 0, os.ErrDeadlineExceeded
	}
	if r.pos == len(r.data) {
		return 0, io.EOF
	}
	end := min(len(r.data), r.pos+len(p), r.pos+r.maxChunk)
	if !r.failed && r.pos < r.cut {
		end = min(end, r.cut)
	}
	n := copy(p, r.data[r.pos:end])
	r.pos += n
	return n, nil
}

// TestFrameReaderResumesAfterDeadline interrupts a read at every point of
// a frame, in the length and in the body, for a frame that fits the read
// buffer, one that does not, and one for which the frame buffer grows: the
// read after the error returns the frame whole.
func TestFrameReaderResumesAfterDeadline(t *testing.T) {
	small := &channelv1.Frame{Call: &channelv1.Call{Id: 7, Method: "/vm_tools.Maitred/GetKernelVersion", Payload: []byte("abc")}}
	big := &channelv1.Frame{Reply: &channelv1.Reply{Id: 9, Payload: bytes.Repeat([]byte("x"), 40<<10)}}
	bigger := &channelv1.Frame{Reply: &channelv1.Reply{Id: 10, Payload: bytes.Repeat([]byte("y"), 3*minBuf)}}
	for _, f := range []*channelv1.Frame{small, big, bigger} {
		var buf bytes.Buffer
		if _, err := newFrameWriter(&buf, maxFrame).write(context.Background(), f); err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		step := 1
		if len(data) > 1000 {
			step = 997
		}
		for cut := 0; cut < len(data); cut += step {
			fr := newFrameReader(&interruptedReader{data: data, cut: cut, maxChunk: 4099}, maxFrame)
			if _, err := fr.read(); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("cut at %d of %d: first read got %v, want the deadline error", cut, len(data), err)
			}
			got, err := fr.read()
			if err != nil {
				t.Fatalf("cut at %d of %d: read after the deadline: %v", cut, len(data), err)
			}
			if !proto.Equal(got, f) {
				t.Fatalf("cut at %d of %d: got a different frame", cut, len(data))
			}
			if _, err := fr.read(); err != io.EOF {
				t.Fatalf("cut at %d of %d: after the frame: %v, want EOF", cut, len(data), err)
			}
		}
	}
}

// lastWithError returns all its data in one read, together with err, as
// io.Reader allows and bufio passes on for reads larger than its buffer.
type lastWithError struct {
	data []byte
	err  error
}

func (r *lastWithError) Read(p []byte) (int, error) {
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, r.err
}

// TestFillKeepsLastBytes: bytes that complete the buffer count even when
// an error comes with them; the error is for the next read.
func TestFillKeepsLastBytes(t *testing.T) {
	for _, err := range []error{io.EOF, os.ErrDeadlineExceeded} {
		b := make([]byte, 8)
		n := 3
		if got := fill(&lastWithError{data: []byte("abcde"), err: err}, b, &n); got != nil || n != 8 || string(b[3:]) != "abcde" {
			t.Errorf("with %v: fill returned %v, n %d, %q", err, got, n, b[3:])
		}
	}
	// Short of the end, the error is returned, and what came is kept.
	b := make([]byte, 8)
	n := 0
	if got := fill(&lastWithError{data: []byte("abc"), err: os.ErrDeadlineExceeded}, b, &n); !errors.Is(got, os.ErrDeadlineExceeded) || n != 3 {
		t.Errorf("short read: fill returned %v, n %d", got, n)
	}
}

// A peer that declares a frame of the largest size and sends a few bytes
// of it makes the reader allocate about what it sent, not what it declared.
func TestFrameReaderAllocatesAsBytesArrive(t *testing.T) {
	data := []byte{maxFrame >> 24, maxFrame >> 16 & 0xff, maxFrame >> 8 & 0xff, maxFrame & 0xff, 0x12, 0x08, 1, 2, 3, 4, 5, 6, 7, 8}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fr := newFrameReader(&interruptedReader{data: data, cut: len(data), maxChunk: len(data)}, maxFrame)
	_, err := fr.read()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %v, want the deadline error", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("reading 10 bytes of a frame declared %d bytes long allocated %d bytes", maxFrame, n)
	}
}

// The largest frame a reader takes comes through whole, and one byte more
// is refused.
func TestLargestFrameRoundTrips(t *testing.T) {
	for _, max := range []int{maxReply, maxFrame} {
		payload := make([]byte, max)
		rand.NewChaCha8([32]byte{1}).Read(payload)
		payload = payload[:max-16]
		var buf bytes.Buffer
		if _, err := newFrameWriter(&buf, max).write(context.Background(), &channelv1.Frame{Reply: &channelv1.Reply{Id: 1, Payload: payload}}); err != nil {
			t.Fatal(err)
		}
		pad := max - (buf.Len() - 4) // grow the frame to max bytes exactly
		buf.Reset()
		f := &channelv1.Frame{Reply: &channelv1.Reply{Id: 1, Payload: payload[:len(payload)+pad]}}
		if _, err := newFrameWriter(&buf, max).write(context.Background(), f); err != nil {
			t.Fatal(err)
		}
		if buf.Len()-4 != max {
			t.Fatalf("max %d: frame of %d bytes", max, buf.Len()-4)
		}
		data := bytes.Clone(buf.Bytes())
		fr := newFrameReader(&interruptedReader{data: data, cut: len(data) / 3, maxChunk: 100 << 10}, max)
		if _, err := fr.read(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("max %d: first read = %v, want the deadline error", max, err)
		}
		got, err := fr.read()
		if err != nil {
			t.Fatalf("max %d: %v", max, err)
		}
		if !bytes.Equal(got.GetReply().GetPayload(), f.Reply.Payload) {
			t.Errorf("max %d: payload differs", max)
		}
		binary.BigEndian.PutUint32(data, uint32(max+1))
		if _, err := newFrameReader(bytes.NewReader(data), max).read(); !errors.Is(err, errFrameTooLarge) {
			t.Errorf("max %d: a frame of max+1 bytes = %v, want errFrameTooLarge", max, err)
		}
	}
}
