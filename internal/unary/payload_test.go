package unary

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
)

// A reply whose message is encoded straight into the frame is the same
// bytes as one whose payload was encoded first.
func TestReplyPayloadEncodedInPlace(t *testing.T) {
	// Nested and repeated fields, no maps (whose order is not fixed).
	nested := &channelv1.Frame{Call: &channelv1.Call{Id: 3, Method: "/a.B/C", Payload: []byte("p"),
		Metadata: []*channelv1.Metadata{{Key: "k", Values: [][]byte{[]byte("1"), []byte("2")}}, {Key: "l"}}}}
	for _, msg := range []proto.Message{
		&wrapperspb.BytesValue{},
		&wrapperspb.BytesValue{Value: []byte("small")},
		&wrapperspb.BytesValue{Value: bytes.Repeat([]byte{7}, 32<<10-64)},
		&wrapperspb.BytesValue{Value: bytes.Repeat([]byte{9}, 300<<10)},
		nested,
	} {
		payload, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		reply := &channelv1.Reply{Id: 1<<62 + 5, Trailer: []*channelv1.Metadata{{Key: "k", Values: [][]byte{[]byte("v")}}}}
		got, err := appendFramePayload(nil, &channelv1.Frame{Reply: reply}, msg)
		if err != nil {
			t.Fatal(err)
		}
		reply.Payload = payload
		want, err := appendFrame(nil, &channelv1.Frame{Reply: reply})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%T of %d bytes: in place %d bytes, want %d", msg, len(payload), len(got), len(want))
		}
		// And through the writer, which the server uses.
		var buf bytes.Buffer
		reply.Payload = nil
		if _, err := newFrameWriter(&buf, maxReply).writePayload(context.Background(), &channelv1.Frame{Reply: reply}, msg); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes()[4:], want) {
			t.Errorf("%T: the writer wrote other bytes", msg)
		}
	}
}

// A reply that has both a payload and a message is refused before a byte
// is written; so is a message too large for a frame.
func TestReplyPayloadRefused(t *testing.T) {
	var buf bytes.Buffer
	fw := newFrameWriter(&buf, 1<<10)
	msg := &wrapperspb.BytesValue{Value: []byte("x")}
	if _, err := fw.writePayload(context.Background(), &channelv1.Frame{Reply: &channelv1.Reply{Id: 1, Payload: []byte("p")}}, msg); err == nil {
		t.Error("a reply with a payload and a message was written")
	}
	big := &wrapperspb.BytesValue{Value: make([]byte, 2<<10)}
	if _, err := fw.writePayload(context.Background(), &channelv1.Frame{Reply: &channelv1.Reply{Id: 1}}, big); err == nil {
		t.Error("a frame larger than the writer's bound was written")
	}
	if buf.Len() != 0 {
		t.Errorf("%d bytes written", buf.Len())
	}
}
