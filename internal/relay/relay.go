// Package relay forwards gRPC calls to a VM's guest agent. Any call whose
// metadata names a VM (cabin-vm, and optionally cabin-owner) goes to that
// VM's agent as it came, whatever its service: messages are relayed as raw
// bytes, headers, trailers and the final status pass through. So a client
// generated from vm_guest.proto reaches Maitred through cabind's socket.
package relay

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/relay/readahead"
)

// Metadata keys that route a call to a VM.
const (
	MetadataVM    = "cabin-vm"
	MetadataOwner = "cabin-owner"
)

// Target returns the connection to the agent of the VM (owner, name): the
// owner the caller acts as (caller.Caller.Owner), which the relay has
// checked against the one the call names.
// Errors should carry an errdefs category (NotFound for an unknown VM,
// Unavailable when its agent is not connected).
type Target func(ctx context.Context, owner, name string) (grpc.ClientConnInterface, error)

// Relay forwards calls that name a VM.
type Relay struct {
	target Target
	// Count, when set, is told the size of every relayed message, and
	// whether it went to the agent or came from it.
	Count func(toAgent bool, n int)
	ahead *readahead.Streams
}

// New returns a Relay that finds agents with target and reads output
// ahead into ahead (readahead.New(readahead.MaxStreams, nil) when nil:
// no spools).
func New(target Target, ahead *readahead.Streams) *Relay {
	if ahead == nil {
		ahead = readahead.New(readahead.MaxStreams, nil)
	}
	return &Relay{target: target, ahead: ahead}
}

// ServerOptions installs the relay in a gRPC server: a codec that passes
// relayed frames through untouched (and proto messages as usual), the
// interceptors that divert calls naming a VM, and the handler for services
// the server does not know.
func (r *Relay) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(codec{}),
		grpc.ChainUnaryInterceptor(r.unary),
		grpc.ChainStreamInterceptor(r.stream),
		grpc.UnknownServiceHandler(r.unknown),
	}
}

// route returns the VM an incoming call names, if any.
func route(ctx context.Context) (owner, name string, ok bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	names := md.Get(MetadataVM)
	if len(names) == 0 {
		return "", "", false
	}
	if owners := md.Get(MetadataOwner); len(owners) > 0 {
		owner = owners[0]
	}
	return owner, names[0], true
}

// outgoing is the metadata to send on: the caller's, without the routing
// keys and the ones gRPC sets itself.
func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		switch {
		case k == MetadataVM, k == MetadataOwner, k == "content-type", k == "user-agent",
			strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"):
			continue
		}
		out[k] = v
	}
	return metadata.NewOutgoingContext(ctx, out)
}

// vmConn is the agent connection of the VM (owner, name) a call goes to.
type vmConn struct {
	cc          grpc.ClientConnInterface
	owner, name string
}

func (r *Relay) conn(ctx context.Context) (vmConn, bool, error) {
	owner, name, ok := route(ctx)
	if !ok {
		return vmConn{}, false, nil
	}
	// A caller reaches only the VMs of the owner it may act as.
	owner, err := caller.FromContext(ctx).Owner(owner)
	if err != nil {
		return vmConn{}, true, errgrpc.ToGRPC(err)
	}
	cc, err := r.target(ctx, owner, name)
	if err != nil {
		return vmConn{}, true, errgrpc.ToGRPC(err)
	}
	return vmConn{cc: cc, owner: owner, name: name}, true, nil
}

func (r *Relay) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	vc, ok, err := r.conn(ctx)
	if !ok {
		return handler(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	// The server decoded the request for a method it serves itself; encode
	// it again (unknown fields included) to send it on.
	in, ok := req.(proto.Message)
	if !ok {
		return nil, errgrpc.Errorf(errdefs.ErrInternal, "relay: %T is not a proto message", req)
	}
	b, err := proto.Marshal(in)
	if err != nil {
		return nil, errgrpc.Errorf(errdefs.ErrInternal, "relay: %v", err)
	}
	r.count(true, &Frame{b: b})
	var header, trailer metadata.MD
	reply := new(Frame)
	err = vc.cc.Invoke(outgoing(ctx), info.FullMethod, &Frame{b: b}, reply,
		grpc.ForceCodecV2(codec{}), grpc.Header(&header), grpc.Trailer(&trailer))
	grpc.SetHeader(ctx, header)
	grpc.SetTrailer(ctx, trailer)
	if err != nil {
		return nil, err
	}
	r.count(false, reply)
	return reply, nil
}

func (r *Relay) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	vc, ok, err := r.conn(ss.Context())
	if !ok {
		return handler(srv, ss)
	}
	if err != nil {
		return err
	}
	if isUnary(info.FullMethod) {
		return r.forwardUnary(ss, vc, info.FullMethod)
	}
	return r.forward(ss, vc.cc, info.FullMethod)
}

// isUnary reports whether method is a unary method of a service in the
// protobuf registry. Such calls go through Invoke, which the agent
// connection carries without HTTP/2; anything else (streaming, or a
// service this binary does not know) is relayed as a stream, which is
// correct for every kind of call. Answers are remembered: the registry
// does not change once the program runs.
func isUnary(method string) bool {
	if v, ok := unaryMethods.Load(method); ok {
		return v.(bool)
	}
	u, known := lookupUnary(method)
	if known {
		unaryMethods.Store(method, u)
	}
	return u
}

// unaryMethods caches isUnary. Only method names of registered services
// are kept, so callers cannot grow it without bound.
var unaryMethods sync.Map

// lookupUnary answers isUnary from the registry; known is false when
// method is not a method of a registered service.
func lookupUnary(method string) (unary, known bool) {
	service, name, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return false, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false, false
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return false, false
	}
	return !md.IsStreamingClient() && !md.IsStreamingServer(), true
}

// forwardUnary relays a unary call that arrived as a stream.
func (r *Relay) forwardUnary(ss grpc.ServerStream, vc vmConn, method string) error {
	req := new(Frame)
	if err := ss.RecvMsg(req); err != nil {
		if errors.Is(err, io.EOF) {
			return errgrpc.Errorf(errdefs.ErrInternal, "unary method %s called without a request", method)
		}
		return err
	}
	invoke := func(ctx context.Context, req []byte) (readahead.Reply, error) {
		r.count(true, &Frame{b: req})
		var header, trailer metadata.MD
		reply := new(Frame)
		err := vc.cc.Invoke(outgoing(ctx), method, &Frame{b: req}, reply,
			grpc.ForceCodecV2(codec{}), grpc.Header(&header), grpc.Trailer(&trailer))
		if err == nil {
			r.count(false, reply)
		}
		return readahead.Reply{Msg: reply.b, Header: header, Trailer: trailer}, err
	}
	var reply readahead.Reply
	var err error
	if stderr, ok := kataRead(method); ok {
		reply, err = r.ahead.Read(ss.Context(), vc.owner, vc.name, stderr, req.b, invoke)
	} else {
		reply, err = invoke(ss.Context(), req.b)
		if err == nil {
			r.forgetAhead(vc, method, req.b)
		}
	}
	if len(reply.Header) > 0 {
		if herr := ss.SendHeader(reply.Header); herr != nil {
			return herr
		}
	}
	ss.SetTrailer(reply.Trailer)
	if err != nil {
		return err
	}
	return ss.SendMsg(&Frame{b: reply.Msg})
}

// unknown handles calls to services the server does not serve; calls
// naming a VM were already diverted by the stream interceptor.
func (r *Relay) unknown(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	return errgrpc.Errorf(errdefs.ErrNotImplemented, "unknown method %s (set metadata %q to call a VM's agent)", method, MetadataVM)
}

var bidi = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// forward pumps one call both ways between the caller (ss) and the agent.
func (r *Relay) forward(ss grpc.ServerStream, cc grpc.ClientConnInterface, method string) error {
	ctx, cancel := context.WithCancel(outgoing(ss.Context()))
	defer cancel()
	cs, err := cc.NewStream(ctx, bidi, method, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return err
	}
	// Caller to agent. When this side fails the agent's side reports the
	// final status, so the error itself is not needed.
	go func() {
		for {
			f := new(Frame)
			if err := ss.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			r.count(true, f)
			if err := cs.SendMsg(f); err != nil {
				return
			}
		}
	}()
	// Agent to caller. The agent's headers go on when they come, not with
	// its first message: a caller may wait for them before it sends. When
	// the call fails before any, RecvMsg reports it.
	if md, err := cs.Header(); err == nil && len(md) > 0 {
		if err := ss.SendHeader(md); err != nil {
			return err
		}
	}
	for {
		f := new(Frame)
		if err := cs.RecvMsg(f); err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		r.count(false, f)
		if err := ss.SendMsg(f); err != nil {
			return err
		}
	}
}

func (r *Relay) count(toAgent bool, f *Frame) {
	if r.Count != nil {
		r.Count(toAgent, len(f.b))
	}
}

// Frame is one message relayed without being decoded.
type Frame struct{ b []byte }

// codec passes Frames through as bytes and handles everything else as the
// standard proto codec does. Its name is "proto", so the content type on
// the wire does not change.
type codec struct{}

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.b)}, nil
	}
	return protoCodec().Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		f.b = data.Materialize()
		return nil
	}
	return protoCodec().Unmarshal(data, v)
}
