package unary

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// chunksOf registers data in buffers of at most size bytes, as a caller
// of ReplyInPlaceChunks would: the first after Headroom bytes of room,
// the message's field left empty.
func chunksOf(data []byte, size int) (*inPlace, *wrapperspb.BytesValue, *int) {
	first := data[:min(len(data), size)]
	buf := append(make([]byte, Headroom, Headroom+len(first)), first...)
	var more [][]byte
	for rest := data[len(first):]; len(rest) > 0; rest = rest[min(len(rest), size):] {
		more = append(more, rest[:min(len(rest), size)])
	}
	if more == nil {
		// One buffer only: as ReplyInPlaceChunks, ReplyInPlace.
		msg := &wrapperspb.BytesValue{Value: buf[Headroom:]}
		var done int
		return &inPlace{msg: msg, field: 1, buf: buf, off: Headroom, done: func() { done++ }}, msg, &done
	}
	msg := &wrapperspb.BytesValue{}
	var done int
	return &inPlace{msg: msg, field: 1, buf: buf, off: Headroom, more: more, done: func() { done++ }}, msg, &done
}

// Data in several buffers goes out from them, one write each, as the
// bytes the usual encoding makes; a reply that must be encoded as usual
// after all gets a copy of the data in its field first.
func TestInPlaceChunks(t *testing.T) {
	data := make([]byte, 100<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ip, msg, _ := chunksOf(data, 32<<10-64)
	bufs, ok := ip.frame(&channelv1.Reply{Id: 9}, msg, maxReply)
	if !ok || len(bufs) != 4 {
		t.Fatalf("not written in place: %v, %d buffers", ok, len(bufs))
	}
	for i, b := range bufs[1:] {
		if &b[0] != &ip.more[i][0] {
			t.Fatalf("buffer %d is a copy", i+1)
		}
	}
	var want bytes.Buffer
	if _, err := newFrameWriter(&want, maxReply).writePayload(context.Background(), &channelv1.Frame{Reply: &channelv1.Reply{Id: 9}}, &wrapperspb.BytesValue{Value: data}); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("in place %d bytes, want %d", len(got), want.Len())
	}
	// A reply with a header cannot go in place: fill puts the data in.
	if _, ok := ip.frame(&channelv1.Reply{Id: 9, Header: []*channelv1.Metadata{{Key: "k"}}}, msg, maxReply); ok {
		t.Fatal("a reply with a header went in place")
	}
	ip.fill(msg)
	if !bytes.Equal(msg.GetValue(), data) {
		t.Fatalf("filled %d bytes, want the %d of the buffers", len(msg.GetValue()), len(data))
	}
	// A message with its field set is not what was registered.
	if _, ok := ip.frame(&channelv1.Reply{Id: 9}, msg, maxReply); ok {
		t.Fatal("a registration of buffers went in place with the field set")
	}
}

// Through the server: data registered in several buffers reaches the
// client whole; with a header set it cannot go in place, and reaches it
// whole all the same, copied into the reply; done comes once either way.
func TestReplyInPlaceChunksServed(t *testing.T) {
	c, _, srv := pair(t)
	a := &agent{}
	kata.RegisterAgentServiceServer(srv, a)
	client := kata.NewAgentServiceClient(c)
	data := make([]byte, 100<<10)
	for i := range data {
		data[i] = byte(i % 251)
	}
	for _, header := range []bool{false, true} {
		var done atomic.Int32
		a.read = func(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
			ip, _, _ := chunksOf(data, 32<<10-64)
			resp := &kata.ReadStreamResponse{}
			if !ReplyInPlaceChunks(ctx, resp, 1, ip.buf, ip.off, ip.more, func() { done.Add(1) }) {
				t.Error("registration refused")
			}
			if header {
				grpc.SetHeader(ctx, metadata.Pairs("k", "v"))
			}
			return resp, nil
		}
		resp, err := client.ReadStdout(t.Context(), &kata.ReadStreamRequest{ContainerId: "c", Len: 128 << 10})
		if err != nil || !bytes.Equal(resp.GetData(), data) {
			t.Fatalf("header %v: read %d bytes, %v; want %d", header, len(resp.GetData()), err, len(data))
		}
		waitFor(t, func() bool { return done.Load() == 1 })
	}
}
