package unary

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// inPlaceOf puts data into a buffer after Headroom+extra bytes of room,
// as a caller of ReplyInPlace would, and returns the registration and the
// message holding the data.
func inPlaceOf(data []byte, extra int) (*inPlace, *wrapperspb.BytesValue, *int) {
	buf := make([]byte, Headroom+extra+len(data))
	copy(buf[Headroom+extra:], data)
	msg := &wrapperspb.BytesValue{Value: buf[Headroom+extra:]}
	var done int
	return &inPlace{msg: msg, field: 1, buf: buf, off: Headroom + extra, done: func() { done++ }}, msg, &done
}

// A frame written in place is the bytes the usual encoding makes, at the
// sizes around every varint boundary of the envelope: the data's length,
// the message's, the reply's, and the call id.
func TestInPlaceFrameSameBytes(t *testing.T) {
	var sizes []int
	for _, edge := range []int{1 << 7, 1 << 14, 1 << 21} {
		// The data's length, and the message's and the reply's (a few
		// bytes of tags and lengths more) cross edge near it.
		for d := -12; d <= 2; d++ {
			sizes = append(sizes, edge+d)
		}
	}
	sizes = append(sizes, 0, 1, 32<<10-64, 32<<10)
	ids := []uint64{0, 1, 127, 128, 1<<14 - 1, 1 << 14, 1<<62 + 5, 1<<64 - 1}
	for _, n := range sizes {
		data := bytes.Repeat([]byte{0xa5}, n)
		for _, id := range ids {
			ip, msg, _ := inPlaceOf(data, 3)
			reply := &channelv1.Reply{Id: id}
			bufs, ok := ip.frame(reply, msg, maxReply)
			if !ok || len(bufs) != 1 {
				t.Fatalf("%d bytes, id %d: not written in place (%d buffers)", n, id, len(bufs))
			}
			got := bufs[0]
			var want bytes.Buffer
			if _, err := newFrameWriter(&want, maxReply).writePayload(context.Background(), &channelv1.Frame{Reply: reply}, &wrapperspb.BytesValue{Value: data}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("%d bytes, id %d: in place %d bytes %x..., want %d bytes %x...", n, id, len(got), got[:min(len(got), 24)], want.Len(), want.Bytes()[:min(want.Len(), 24)])
			}
			// The frame ends with the data where it was: not copied.
			if n > 0 && &got[len(got)-n] != &msg.Value[0] {
				t.Fatalf("%d bytes: the frame's data is a copy", n)
			}
			// And it decodes to the reply.
			var f channelv1.Frame
			if err := decodeFrame(got[4:], &f); err != nil {
				t.Fatal(err)
			}
			var back wrapperspb.BytesValue
			if err := proto.Unmarshal(f.GetReply().GetPayload(), &back); err != nil || !bytes.Equal(back.GetValue(), data) || f.GetReply().GetId() != id {
				t.Fatalf("%d bytes, id %d: decoded id %d, %d bytes, %v", n, id, f.GetReply().GetId(), len(back.GetValue()), err)
			}
		}
	}
}

// A reply that is not what was registered is left to the usual encoding.
func TestInPlaceFrameRefused(t *testing.T) {
	data := []byte("some output")
	for name, change := range map[string]func(*inPlace, *channelv1.Reply, *wrapperspb.BytesValue) proto.Message{
		"another message": func(_ *inPlace, _ *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			return &wrapperspb.BytesValue{Value: m.Value}
		},
		"a copy of the data": func(_ *inPlace, _ *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			m.Value = bytes.Clone(m.Value)
			return m
		},
		"less of the data": func(_ *inPlace, _ *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			m.Value = m.Value[:3]
			return m
		},
		"unknown fields": func(_ *inPlace, _ *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			m.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1))
			return m
		},
		"a field that is not bytes": func(ip *inPlace, _ *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			ip.field = 2
			return m
		},
		"an error": func(_ *inPlace, r *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			r.Code = int32(codes.Internal)
			return nil
		},
		"a trailer": func(_ *inPlace, r *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			r.Trailer = []*channelv1.Metadata{{Key: "k"}}
			return m
		},
		"a header": func(_ *inPlace, r *channelv1.Reply, m *wrapperspb.BytesValue) proto.Message {
			r.Header = []*channelv1.Metadata{{Key: "k"}}
			return m
		},
	} {
		ip, msg, _ := inPlaceOf(data, 0)
		reply := &channelv1.Reply{Id: 7}
		if _, ok := ip.frame(reply, change(ip, reply, msg), maxReply); ok {
			t.Errorf("%s: written in place", name)
		}
	}
	ip, msg, _ := inPlaceOf(make([]byte, 2<<10), 0)
	if _, ok := ip.frame(&channelv1.Reply{Id: 1}, msg, 1<<10); ok {
		t.Error("a frame larger than the bound: written in place")
	}
}

// agent answers ReadStdout from the test's function.
type agent struct {
	kata.UnimplementedAgentServiceServer
	read func(context.Context, *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error)
}

func (a *agent) ReadStdout(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return a.read(ctx, req)
}

// Through the server: a reply registered in place reaches the client
// whole, its envelope written into the room before the data, and done
// comes once, after the reply; an error reply, or a second registration,
// changes nothing the client sees, and done still comes once.
func TestReplyInPlaceServed(t *testing.T) {
	c, _, srv := pair(t)
	a := &agent{}
	kata.RegisterAgentServiceServer(srv, a)
	client := kata.NewAgentServiceClient(c)
	if ReplyInPlace(context.Background(), &kata.ReadStreamResponse{}, 1, make([]byte, Headroom), Headroom, func() {}) {
		t.Error("ReplyInPlace outside a call of a unary server took the reply")
	}
	for _, n := range []int{0, 1, 100, 1<<14 - 3, 32<<10 - 64} {
		for _, fail := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d bytes, error %v", n, fail), func(t *testing.T) {
				data := bytes.Repeat([]byte{'x'}, n)
				buf := make([]byte, Headroom+n)
				copy(buf[Headroom:], data)
				var done atomic.Int32
				registered := make(chan bool, 2)
				a.read = func(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
					resp := &kata.ReadStreamResponse{Data: buf[Headroom:]}
					if ReplyInPlace(ctx, resp, 1, buf, Headroom-1, func() {}) {
						t.Error("less room than Headroom taken")
					}
					registered <- ReplyInPlace(ctx, resp, 1, buf, Headroom, func() { done.Add(1) })
					registered <- ReplyInPlace(ctx, resp, 1, buf, Headroom, func() { t.Error("a second registration was called back") })
					if done.Load() != 0 {
						t.Error("done before the handler returned")
					}
					if fail {
						return nil, status.Error(codes.NotFound, "no such process")
					}
					return resp, nil
				}
				resp, err := client.ReadStdout(t.Context(), &kata.ReadStreamRequest{ContainerId: "c"})
				if first, second := <-registered, <-registered; !first || second {
					t.Errorf("registrations: %v, %v; want the first only", first, second)
				}
				if fail {
					if status.Code(err) != codes.NotFound {
						t.Fatalf("error %v, want NotFound", err)
					}
				} else {
					if err != nil || !bytes.Equal(resp.GetData(), data) {
						t.Fatalf("read %d bytes, %v; want %d", len(resp.GetData()), err, n)
					}
					// The envelope is in the room: the frame went from buf.
					room := buf[:Headroom]
					if bytes.Equal(room, make([]byte, Headroom)) {
						t.Error("nothing written into the room before the data")
					}
					if tag := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.BytesType), uint64(n)); n > 0 && !bytes.HasSuffix(room, tag) {
						t.Errorf("the room ends %x, want the data's tag and length %x", room[Headroom-8:], tag)
					}
				}
				waitFor(t, func() bool { return done.Load() == 1 })
				if d := done.Load(); d != 1 {
					t.Errorf("done called %d times", d)
				}
			})
		}
	}
}

// Any data, call id, room and split into buffers: a frame written in
// place is the bytes the usual encoding makes, and decodes back to the
// reply.
func FuzzInPlaceFrame(f *testing.F) {
	f.Add(uint64(1), []byte("hello"), uint8(0))
	f.Add(uint64(1<<64-1), []byte{}, uint8(200))
	f.Add(uint64(128), bytes.Repeat([]byte{1}, 200), uint8(3))
	f.Add(uint64(129), bytes.Repeat([]byte{2}, 300), uint8(0x87))
	f.Fuzz(func(t *testing.T, id uint64, data []byte, extra uint8) {
		var ip *inPlace
		var msg *wrapperspb.BytesValue
		if extra&0x80 != 0 {
			// Several buffers of extra&0x7f+1 bytes.
			ip, msg, _ = chunksOf(data, int(extra&0x7f)+1)
		} else {
			ip, msg, _ = inPlaceOf(data, int(extra))
		}
		reply := &channelv1.Reply{Id: id}
		bufs, ok := ip.frame(reply, msg, maxReply)
		if !ok {
			t.Fatalf("%d bytes, id %d: not written in place", len(data), id)
		}
		got := bytes.Join(bufs, nil)
		var want bytes.Buffer
		if _, err := newFrameWriter(&want, maxReply).writePayload(context.Background(), &channelv1.Frame{Reply: reply}, &wrapperspb.BytesValue{Value: data}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%d bytes, id %d: in place %x, want %x", len(data), id, got[:min(len(got), 32)], want.Bytes()[:min(want.Len(), 32)])
		}
	})
}
