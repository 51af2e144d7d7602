// Package concierge is cabind's VmConcierge edge
// (vm_tools.concierge.VmConcierge, ChromiumOS concierge's API): it turns
// requests into calls on the VM manager and the manager's answers and
// errors into upstream's messages. It decides nothing itself. Its
// conversions are exported for the cabin.v1 edge, whose messages extend
// concierge's.
package concierge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Server serves vm_tools.concierge.VmConcierge over the manager. Methods
// cabin does not implement yet answer Unimplemented.
type Server struct {
	pb.UnimplementedVmConciergeServer
	m     *vmm.Manager
	disks *diskimage.Store
	cpu   CPURestrictor
}

// Options are the domain services the edge serves besides the manager.
// Without Disks, the disk image methods fail; without CPU, CPU
// restrictions answer success=false, as where there are no cgroups.
type Options struct {
	Disks *diskimage.Store
	CPU   CPURestrictor
}

// New returns the concierge edge over m and o.
func New(m *vmm.Manager, o Options) *Server { return &Server{m: m, disks: o.Disks, cpu: o.CPU} }

// Extensions are what cabin.v1's StartVmRequest adds to concierge's.
type Extensions struct {
	MemoryMiB      int
	Kernel, Initrd string
	Accel          hypervisor.Accel
	Network        string
	// Hotplug asks for a machine that takes devices while it runs.
	Hotplug bool
	// Shares are host folders shared with the VM (startvm.go).
	Shares []vmm.Share
}

func (s *Server) StartVm(ctx context.Context, req *pb.StartVmRequest) (*pb.StartVmResponse, error) {
	return Start(ctx, s.m, req, Extensions{})
}

// Start is StartVm for both APIs. Bad requests are gRPC errors
// (INVALID_ARGUMENT naming the field); a VM that could not start is a
// response with success=false, as upstream reports it.
func Start(ctx context.Context, m *vmm.Manager, req *pb.StartVmRequest, ext Extensions) (*pb.StartVmResponse, error) {
	if err := unsupported(req); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c := caller.FromContext(ctx)
	owner, err := c.Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	spec := vmm.Spec{
		Key:          vmm.Key{Owner: owner, Name: req.GetName()},
		CPUs:         int(req.GetCpus()),
		MemoryMiB:    ext.MemoryMiB,
		Kernel:       ext.Kernel,
		Initrd:       ext.Initrd,
		KernelParams: req.GetKernelParams(),
		Accel:        ext.Accel,
		Type:         vmType(req.GetVmType()),
		Timeout:      time.Duration(req.GetTimeout()) * time.Second,
		Caller:       c,
		Network:      ext.Network,
		Hotplug:      ext.Hotplug,
	}
	if err := startStorage(req, ext, &spec); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	info, started, err := m.Start(ctx, spec)
	if err != nil {
		if requestFailed(err) {
			return nil, errgrpc.ToGRPC(err)
		}
		if errors.Is(err, diskimage.ErrBusy) {
			return &pb.StartVmResponse{FailureReason: err.Error(), Status: pb.VmStatus_VM_STATUS_DISK_OP_IN_PROGRESS}, nil
		}
		return &pb.StartVmResponse{
			FailureReason: err.Error(),
			Status:        pb.VmStatus_VM_STATUS_FAILURE,
		}, nil
	}
	resp := &pb.StartVmResponse{Success: true, VmInfo: VMInfo(info), Status: Status(info.State)}
	if started {
		resp.Status = pb.VmStatus_VM_STATUS_STARTING
	}
	return resp, nil
}

// requestFailed tells a start that failed for its request (bad or not
// supported, or given up by its caller), which is an RPC error, from a VM
// that could not start, which upstream reports in the response. A start
// cut short by cabind stopping is the VM's failure, whatever its cause.
func requestFailed(err error) bool {
	if errors.Is(err, errdefs.ErrUnavailable) {
		return false
	}
	return errors.Is(err, errdefs.ErrInvalidArgument) || errors.Is(err, errdefs.ErrNotImplemented) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// unsupported rejects what cabin cannot honour yet rather than ignoring it.
func unsupported(req *pb.StartVmRequest) error {
	var fields []string
	if len(req.GetFds()) > 0 {
		fields = append(fields, "fds (use cabin.v1.Vms.StartVm kernel_path/initrd_path)")
	}
	if req.GetEnableGpu() || req.GetEnableDgpuPassthrough() || req.GetEnableVirtgpuNativeContext() || req.GetEnableBigGl() {
		fields = append(fields, "gpu")
	}
	if req.GetEnableAudioCapture() {
		fields = append(fields, "enable_audio_capture")
	}
	if req.GetVtpmProxy() {
		fields = append(fields, "vtpm_proxy")
	}
	if req.GetStorageBallooning() {
		fields = append(fields, "storage_ballooning")
	}
	if len(fields) == 0 {
		return nil
	}
	return fmt.Errorf("not supported yet: %s: %w", strings.Join(fields, ", "), errdefs.ErrNotImplemented)
}

func (s *Server) StopVm(ctx context.Context, req *pb.StopVmRequest) (*pb.SuccessFailureResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	if err := s.m.Stop(ctx, key); err != nil {
		if ctx.Err() != nil {
			return nil, errgrpc.ToGRPC(ctx.Err())
		}
		return &pb.SuccessFailureResponse{FailureReason: err.Error()}, nil
	}
	return &pb.SuccessFailureResponse{Success: true}, nil
}

// StopAllVms stops every VM root may act on: all of them for root, a
// user's own for a user.
func (s *Server) StopAllVms(ctx context.Context, _ *emptypb.Empty) (*emptypb.Empty, error) {
	c := caller.FromContext(ctx)
	if err := s.m.StopAll(ctx, func(k vmm.Key) bool { return c.Sees(k.Owner) }); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *Server) GetVmInfo(ctx context.Context, req *pb.GetVmInfoRequest) (*pb.GetVmInfoResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	info, err := s.m.Get(key)
	if errors.Is(err, errdefs.ErrNotFound) {
		return &pb.GetVmInfoResponse{}, nil
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GetVmInfoResponse{Success: true, VmInfo: VMInfo(info)}, nil
}

func (s *Server) ListVms(ctx context.Context, req *pb.ListVmsRequest) (*pb.ListVmsResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetOwnerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &pb.ListVmsResponse{Success: true}
	for _, in := range s.m.List(owner) {
		resp.Vms = append(resp.Vms, &pb.ExtendedVmInfo{
			Name: in.Name, OwnerId: in.Owner, VmInfo: VMInfo(in), Status: Status(in.State),
		})
	}
	return resp, nil
}

// maxLogReply is the most log GetVmLogs answers with. Upstream's D-Bus
// method returns up to 30 MiB; a gRPC client takes at most 4 MiB in a
// message unless told otherwise, so the answer stays under that, with room
// for its encoding.
const maxLogReply = 4<<20 - 4<<10

// GetVmLogs answers with the VM's console log, or, when that does not fit
// in maxLogReply, with its newest part after a line saying so and where
// the whole of it is (the cabin.v1.Vms.Logs stream).
func (s *Server) GetVmLogs(ctx context.Context, req *pb.GetVmLogsRequest) (*pb.GetVmLogsResponse, error) {
	key, err := requestKey(ctx, req.GetOwnerId(), req.GetName())
	if err != nil {
		return nil, err
	}
	b, total, err := s.m.LogTail(key, maxLogReply)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GetVmLogsResponse{Log: fitLog(b, total, key)}, nil
}

// fitLog makes the newest bytes b of a log of total bytes into a proto3
// string, which must be UTF-8 (a console log need not be), of at most
// maxLogReply bytes. A log cut short starts with a line saying so, then
// goes on from the start of a line.
func fitLog(b []byte, total int64, key vmm.Key) string {
	// Each byte that is not UTF-8 becomes three, U+FFFD.
	log := strings.ToValidUTF8(string(b), "\uFFFD")
	if int64(len(b)) == total && len(log) <= maxLogReply {
		return log
	}
	cmd := "cabin vm logs " + key.Name
	if key.Owner != "" {
		cmd = "cabin --owner " + key.Owner + " vm logs " + key.Name
	}
	note := fmt.Sprintf("[cabind: this log of %d bytes is cut to its newest part to fit one message; "+
		"all of it: %s, or the stream cabin.v1.Vms/Logs]\n", total, cmd)
	if keep := maxLogReply - len(note); len(log) > keep {
		log = log[len(log)-keep:]
		// Not in the middle of a character (the cut may have split a
		// U+FFFD it made)...
		for len(log) > 0 && !utf8.RuneStart(log[0]) {
			log = log[1:]
		}
	}
	// ... nor of a line.
	if i := strings.IndexByte(log, '\n'); i >= 0 && i+1 < len(log) {
		log = log[i+1:]
	}
	return note + log
}

// requestKey is the VM a request names, in the owner its caller acts as,
// validated; its error is a gRPC status.
func requestKey(ctx context.Context, owner, name string) (vmm.Key, error) {
	owner, err := caller.FromContext(ctx).Owner(owner)
	if err != nil {
		return vmm.Key{}, errgrpc.ToGRPC(err)
	}
	key := vmm.Key{Owner: owner, Name: name}
	if err := key.Validate(); err != nil {
		return vmm.Key{}, errgrpc.ToGRPC(err)
	}
	return key, nil
}

func (s *Server) GetDnsSettings(context.Context, *emptypb.Empty) (*pb.DnsSettings, error) {
	return DNSSettings(s.m.DNS()), nil
}
