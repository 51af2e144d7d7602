package unary

import (
	"context"
	"encoding/binary"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
)

// Headroom is how many bytes an in-place reply (see ReplyInPlace) needs
// before its data: the frame's length, the Frame's reply tag and length,
// the call id (a varint of up to 10 bytes), the payload's tag and length,
// and the message's field tag and length.
const Headroom = 4 + (1 + 5) + (1 + 10) + (1 + 5) + (5 + 5)

// inPlace is what ReplyInPlace registered for a call.
type inPlace struct {
	msg   proto.Message
	field protowire.Number
	buf   []byte // the data is buf[off:], then more's
	off   int
	more  [][]byte // see ReplyInPlaceChunks
	done  func()
}

// ReplyInPlace tells the unary server running ctx's call that msg, the
// reply its handler is about to return, has one field set, the bytes
// field num, holding buf[off:], and that buf[:off] is the server's to
// write the reply's envelope into: the reply then goes to the port
// straight from buf, the data not copied into a frame of its own (a
// pass over every byte of a ReadStdout reply, decisions §35). done is
// called once the reply has been written or dropped, after the handler
// has returned; buf is not touched after that.
//
// It reports false, and done is never called, when ctx is not a call of a
// unary Server (a gRPC server's), when off is less than Headroom, or when
// the call has registered already: the handler returns msg all the same,
// encoded as usual. A reply that turns out not to be what was registered
// (an error, another message, other fields set, metadata to send) is
// encoded as usual too, and done is still called after.
func ReplyInPlace(ctx context.Context, msg proto.Message, num protowire.Number, buf []byte, off int, done func()) bool {
	return register(ctx, inPlace{msg: msg, field: num, buf: buf, off: off, done: done})
}

// ReplyInPlaceChunks is ReplyInPlace for data in several buffers: the
// reply's field num holds buf[off:] and then each of more, in order, and
// the reply goes to the connection from them, one write each (a port's
// write takes at most 32 KiB), its envelope in buf[:off]. The handler
// leaves the field empty in msg: if the reply turns out to need encoding
// as usual, the server puts a copy of the data there first. Where it
// reports false, the handler fills the field itself.
func ReplyInPlaceChunks(ctx context.Context, msg proto.Message, num protowire.Number, buf []byte, off int, more [][]byte, done func()) bool {
	if len(more) == 0 {
		more = nil // one buffer: as ReplyInPlace
	}
	return register(ctx, inPlace{msg: msg, field: num, buf: buf, off: off, more: more, done: done})
}

// register registers ip for ctx's call, if it is a call of a unary
// Server and ip can be written in place; see ReplyInPlace.
func register(ctx context.Context, ip inPlace) bool {
	ts, ok := grpc.ServerTransportStreamFromContext(ctx).(*transportStream)
	if !ok || ip.msg == nil || ip.done == nil || !ip.field.IsValid() || ip.off < Headroom || ip.off > len(ip.buf) {
		return false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.inPlace.done != nil {
		return false
	}
	ts.inPlace = ip
	return true
}

// takeInPlace returns what the call registered with ReplyInPlace, if
// anything, and forgets it.
func (t *transportStream) takeInPlace() *inPlace {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inPlace.done == nil {
		return nil
	}
	ip := t.inPlace
	t.inPlace = inPlace{}
	return &ip
}

// frame writes the envelope of reply r, whose message is msg, into the
// headroom and returns the whole frame, length first, ending with the
// data, as the buffers to write one after another: the same bytes
// appendFramePayload makes of it. ok is false when the reply is not what
// was registered, or does not fit max; the reply is then encoded as usual
// (see fill).
func (p *inPlace) frame(r *channelv1.Reply, msg proto.Message, max int) (_ [][]byte, ok bool) {
	if msg == nil || msg != p.msg || r.GetCode() != 0 || r.GetMessage() != "" || len(r.GetDetails()) > 0 ||
		len(r.GetHeader()) > 0 || len(r.GetTrailer()) > 0 || len(r.GetPayload()) > 0 {
		return nil, false
	}
	data := p.buf[p.off:]
	m := msg.ProtoReflect()
	fd := p.fieldOf(m)
	if fd == nil {
		return nil, false
	}
	size := len(data)
	for _, b := range p.more {
		size += len(b)
	}
	// The message's encoding is the field alone, unless something else is
	// set (another field, unknown fields): then its size says so. With
	// more buffers the message is empty until then.
	msgLen := 0
	if size > 0 || fd.HasPresence() {
		msgLen = protowire.SizeTag(p.field) + protowire.SizeBytes(size)
	}
	if p.more != nil {
		if proto.Size(msg) != 0 {
			return nil, false
		}
	} else if v := m.Get(fd).Bytes(); len(v) != len(data) || len(v) > 0 && &v[0] != &data[0] || proto.Size(msg) != msgLen {
		return nil, false
	}
	replyLen := sizeUint(replyID, r.GetId()) + sizeBytes(replyPayload, msgLen)
	frameLen := protowire.SizeTag(frameReply) + protowire.SizeBytes(replyLen)
	if frameLen > max {
		return nil, false
	}
	var hb [Headroom]byte
	h := binary.BigEndian.AppendUint32(hb[:0], uint32(frameLen))
	h = protowire.AppendTag(h, frameReply, protowire.BytesType)
	h = protowire.AppendVarint(h, uint64(replyLen))
	h = appendUint(h, replyID, r.GetId())
	if msgLen > 0 {
		h = protowire.AppendTag(h, replyPayload, protowire.BytesType)
		h = protowire.AppendVarint(h, uint64(msgLen))
		h = protowire.AppendTag(h, p.field, protowire.BytesType)
		h = protowire.AppendVarint(h, uint64(size))
	}
	if len(h) > p.off || len(h) > len(hb) {
		return nil, false
	}
	start := p.off - len(h)
	copy(p.buf[start:p.off], h)
	return append([][]byte{p.buf[start:]}, p.more...), true
}

// fieldOf is the registered field of m, when it is a singular bytes
// field.
func (p *inPlace) fieldOf(m protoreflect.Message) protoreflect.FieldDescriptor {
	fd := m.Descriptor().Fields().ByNumber(p.field)
	if fd == nil || fd.Kind() != protoreflect.BytesKind || fd.Cardinality() == protoreflect.Repeated {
		return nil
	}
	return fd
}

// fill puts a copy of the data of a registration of several buffers
// into the message's field, which the handler left empty, for the reply
// to be encoded as usual.
func (p *inPlace) fill(msg proto.Message) {
	if p.more == nil || msg == nil || msg != p.msg {
		return
	}
	m := msg.ProtoReflect()
	fd := p.fieldOf(m)
	if fd == nil {
		return
	}
	data := append([]byte(nil), p.buf[p.off:]...)
	for _, b := range p.more {
		data = append(data, b...)
	}
	m.Set(fd, protoreflect.ValueOfBytes(data))
}

// writeFrame writes a whole frame (length first) made by the caller, in
// the buffers bs, one write each, giving up when ctx ends as write does.
func (fw *frameWriter) writeFrame(ctx context.Context, bs ...[]byte) (n int, err error) {
	if err := fw.acquire(ctx); err != nil {
		return 0, err
	}
	defer fw.release()
	for _, b := range bs {
		m, err := writeContext(ctx, fw.w, b)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
