package unary

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	channelv1 "github.com/cabinvm/cabin/api/cabin/channel/v1"
)

// The envelope, cabin.channel.v1.Frame, is encoded and decoded by hand:
// it is on every call, both ways, and in a guest under emulation the
// generic protobuf code took about a tenth of a call's CPU. The bytes are the
// protobuf encoding of the generated messages (the tests check it against
// the protobuf library both ways), fields in number order, and decoding
// follows protobuf's rules: unknown fields and fields of an unexpected
// wire type are skipped, a message field that comes twice is merged, a
// scalar that comes twice keeps the last value, strings must be UTF-8.

// Field numbers, as in unary.proto.
const (
	frameCall   = 1
	frameReply  = 2
	frameCancel = 3

	metadataKey    = 1
	metadataValues = 2

	callID       = 1
	callMethod   = 2
	callMetadata = 3
	callTimeout  = 4
	callPayload  = 5

	replyID      = 1
	replyPayload = 2
	replyCode    = 3
	replyMessage = 4
	replyDetails = 5
	replyHeader  = 6
	replyTrailer = 7

	cancelID = 1
)

// appendFrame appends f's encoding to b.
func appendFrame(b []byte, f *channelv1.Frame) ([]byte, error) {
	return appendFramePayload(b, f, nil)
}

// appendFramePayload appends f's encoding to b, with msg, when not nil,
// encoded straight into the reply's payload (which f's reply must not
// have): a reply's message is then encoded once, into the frame, rather
// than into a payload of its own that is then copied. Under emulation a
// copy of a 32 KiB ReadStdout reply, and the garbage, showed in the
// agent's profile (decisions §31).
func appendFramePayload(b []byte, f *channelv1.Frame, msg proto.Message) ([]byte, error) {
	var err error
	if c := f.GetCall(); c != nil {
		b = appendMessage(b, frameCall, sizeCall(c), func(b []byte) []byte { return appendCall(b, c) })
	}
	if r := f.GetReply(); r != nil {
		var details [][]byte
		if details, err = marshalDetails(r.GetDetails()); err != nil {
			return nil, err
		}
		p := payload{b: r.GetPayload(), n: len(r.GetPayload())}
		if msg != nil {
			if len(p.b) > 0 {
				return nil, errors.New("a reply with a payload and a message")
			}
			p = payload{msg: msg, n: proto.Size(msg)}
		}
		b = appendMessage(b, frameReply, sizeReply(r, p.n, details), func(b []byte) []byte { return appendReply(b, r, p, details) })
		if p.err != nil {
			return nil, p.err
		}
	}
	if c := f.GetCancel(); c != nil {
		b = appendMessage(b, frameCancel, sizeUint(cancelID, c.GetId()), func(b []byte) []byte { return appendUint(b, cancelID, c.GetId()) })
	}
	return b, nil
}

func appendMessage(b []byte, num protowire.Number, size int, body func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	return body(b)
}

func appendCall(b []byte, c *channelv1.Call) []byte {
	b = appendUint(b, callID, c.GetId())
	b = appendString(b, callMethod, c.GetMethod())
	b = appendMetadata(b, callMetadata, c.GetMetadata())
	b = appendUint(b, callTimeout, uint64(c.GetTimeoutNanos()))
	return appendBytes(b, callPayload, c.GetPayload())
}

func sizeCall(c *channelv1.Call) int {
	return sizeUint(callID, c.GetId()) + sizeBytes(callMethod, len(c.GetMethod())) +
		sizeMetadata(callMetadata, c.GetMetadata()) + sizeUint(callTimeout, uint64(c.GetTimeoutNanos())) +
		sizeBytes(callPayload, len(c.GetPayload()))
}

// payload is a reply's payload: bytes, or a message to encode, of n
// bytes encoded.
type payload struct {
	b   []byte
	msg proto.Message
	n   int
	err error // from encoding msg
}

func (p *payload) append(b []byte) []byte {
	if p.msg == nil {
		return appendBytes(b, replyPayload, p.b)
	}
	if p.n == 0 {
		return b
	}
	b = protowire.AppendTag(b, replyPayload, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(p.n))
	start := len(b)
	// The sizes proto.Size just cached are used, not measured again.
	b, p.err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, p.msg)
	if p.err == nil && len(b)-start != p.n {
		p.err = fmt.Errorf("encoded %d bytes of a message sized %d", len(b)-start, p.n)
	}
	return b
}

func appendReply(b []byte, r *channelv1.Reply, p payload, details [][]byte) []byte {
	b = appendUint(b, replyID, r.GetId())
	b = p.append(b)
	// int32 is encoded as its 64-bit sign extension, as protobuf does.
	b = appendUint(b, replyCode, uint64(int64(r.GetCode())))
	b = appendString(b, replyMessage, r.GetMessage())
	for _, d := range details {
		b = protowire.AppendTag(b, replyDetails, protowire.BytesType)
		b = protowire.AppendBytes(b, d)
	}
	b = appendMetadata(b, replyHeader, r.GetHeader())
	return appendMetadata(b, replyTrailer, r.GetTrailer())
}

func sizeReply(r *channelv1.Reply, payload int, details [][]byte) int {
	n := sizeUint(replyID, r.GetId()) + sizeBytes(replyPayload, payload) +
		sizeUint(replyCode, uint64(int64(r.GetCode()))) + sizeBytes(replyMessage, len(r.GetMessage())) +
		sizeMetadata(replyHeader, r.GetHeader()) + sizeMetadata(replyTrailer, r.GetTrailer())
	for _, d := range details {
		n += protowire.SizeTag(replyDetails) + protowire.SizeBytes(len(d))
	}
	return n
}

// marshalDetails encodes a reply's status details, which only errors
// carry; they are Any messages, left to the protobuf library.
func marshalDetails(ds []*anypb.Any) ([][]byte, error) {
	if len(ds) == 0 {
		return nil, nil
	}
	out := make([][]byte, len(ds))
	for i, d := range ds {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("status detail: %w", err)
		}
		out[i] = b
	}
	return out, nil
}

func appendMetadata(b []byte, num protowire.Number, ms []*channelv1.Metadata) []byte {
	for _, m := range ms {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeMetadataEntry(m)))
		b = appendString(b, metadataKey, m.GetKey())
		for _, v := range m.GetValues() {
			// Repeated bytes are written even when empty.
			b = protowire.AppendTag(b, metadataValues, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		}
	}
	return b
}

func sizeMetadata(num protowire.Number, ms []*channelv1.Metadata) int {
	n := 0
	for _, m := range ms {
		n += protowire.SizeTag(num) + protowire.SizeBytes(sizeMetadataEntry(m))
	}
	return n
}

func sizeMetadataEntry(m *channelv1.Metadata) int {
	n := sizeBytes(metadataKey, len(m.GetKey()))
	for _, v := range m.GetValues() {
		n += protowire.SizeTag(metadataValues) + protowire.SizeBytes(len(v))
	}
	return n
}

// Scalars at their zero value are left out, as proto3 does.

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func sizeUint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

var errInvalidUTF8 = errors.New("string field is not valid UTF-8")

// decodeFrame decodes b into f, merging into what f holds. Byte fields
// are copied: b may be reused.
func decodeFrame(b []byte, f *channelv1.Frame) error {
	return decodeFrameInterning(b, f, nil)
}

// interner returns the string equal to b if it knows one, so that
// decoding a method name it knows allocates nothing.
type interner func(b []byte) (string, bool)

// decodeFrameInterning is decodeFrame taking method names from intern
// where it has them.
func decodeFrameInterning(b []byte, f *channelv1.Frame, intern interner) error {
	return forFields(b, func(num protowire.Number, typ protowire.Type, v fieldValue) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case frameCall:
			if f.Call == nil {
				f.Call = new(channelv1.Call)
			}
			return decodeCall(v.bytes, f.Call, intern)
		case frameReply:
			if f.Reply == nil {
				f.Reply = new(channelv1.Reply)
			}
			return decodeReply(v.bytes, f.Reply)
		case frameCancel:
			if f.Cancel == nil {
				f.Cancel = new(channelv1.Cancel)
			}
			return forFields(v.bytes, func(num protowire.Number, typ protowire.Type, v fieldValue) error {
				if num == cancelID && typ == protowire.VarintType {
					f.Cancel.Id = v.varint
				}
				return nil
			})
		}
		return nil
	})
}

func decodeCall(b []byte, c *channelv1.Call, intern interner) error {
	return forFields(b, func(num protowire.Number, typ protowire.Type, v fieldValue) error {
		switch {
		case num == callID && typ == protowire.VarintType:
			c.Id = v.varint
		case num == callTimeout && typ == protowire.VarintType:
			c.TimeoutNanos = int64(v.varint)
		case num == callMethod && typ == protowire.BytesType:
			if intern != nil {
				if s, ok := intern(v.bytes); ok {
					c.Method = s
					return nil
				}
			}
			s, err := utf8String(v.bytes)
			if err != nil {
				return fmt.Errorf("method: %w", err)
			}
			c.Method = s
		case num == callMetadata && typ == protowire.BytesType:
			return addMetadata(&c.Metadata, v.bytes)
		case num == callPayload && typ == protowire.BytesType:
			c.Payload = bytes.Clone(v.bytes)
		}
		return nil
	})
}

func decodeReply(b []byte, r *channelv1.Reply) error {
	return forFields(b, func(num protowire.Number, typ protowire.Type, v fieldValue) error {
		switch {
		case num == replyID && typ == protowire.VarintType:
			r.Id = v.varint
		case num == replyCode && typ == protowire.VarintType:
			r.Code = int32(v.varint)
		case num == replyPayload && typ == protowire.BytesType:
			r.Payload = bytes.Clone(v.bytes)
		case num == replyMessage && typ == protowire.BytesType:
			s, err := utf8String(v.bytes)
			if err != nil {
				return fmt.Errorf("message: %w", err)
			}
			r.Message = s
		case num == replyDetails && typ == protowire.BytesType:
			d := new(anypb.Any)
			if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(v.bytes, d); err != nil {
				return fmt.Errorf("status detail: %w", err)
			}
			r.Details = append(r.Details, d)
		case num == replyHeader && typ == protowire.BytesType:
			return addMetadata(&r.Header, v.bytes)
		case num == replyTrailer && typ == protowire.BytesType:
			return addMetadata(&r.Trailer, v.bytes)
		}
		return nil
	})
}

// addMetadata decodes one metadata entry from b and appends it to ms.
func addMetadata(ms *[]*channelv1.Metadata, b []byte) error {
	m := new(channelv1.Metadata)
	*ms = append(*ms, m)
	return forFields(b, func(num protowire.Number, typ protowire.Type, v fieldValue) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case metadataKey:
			s, err := utf8String(v.bytes)
			if err != nil {
				return fmt.Errorf("metadata key: %w", err)
			}
			m.Key = s
		case metadataValues:
			m.Values = append(m.Values, bytes.Clone(v.bytes))
		}
		return nil
	})
}

// fieldValue is a decoded field: varint for VarintType, bytes (aliasing
// the input) for BytesType; other types carry nothing.
type fieldValue struct {
	varint uint64
	bytes  []byte
}

// forFields calls fn for each field in b, in order.
func forFields(b []byte, fn func(protowire.Number, protowire.Type, fieldValue) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if !num.IsValid() {
			return fmt.Errorf("invalid field number %d", num)
		}
		b = b[n:]
		var v fieldValue
		switch typ {
		case protowire.VarintType:
			v.varint, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v.bytes, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

func utf8String(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", errInvalidUTF8
	}
	return string(b), nil
}
