package kata

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/version"
)

// Service is grpc.AgentService over a Sandbox. The calls it does not
// define answer Unimplemented.
type Service struct {
	pb.UnimplementedAgentServiceServer
	s *Sandbox
}

var _ pb.AgentServiceServer = (*Service)(nil)

// NewService returns the gRPC service for s.
func NewService(s *Sandbox) *Service { return &Service{s: s} }

var empty = &emptypb.Empty{}

func reply(err error) (*emptypb.Empty, error) {
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

func (v *Service) GetGuestDetails(ctx context.Context, req *pb.GuestDetailsRequest) (*pb.GuestDetailsResponse, error) {
	d, err := v.s.GuestDetails(req.GetMemBlockSize(), req.GetMemHotplugProbe())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.GuestDetailsResponse{
		MemBlockSizeBytes:      d.MemBlockSize,
		SupportMemHotplugProbe: d.HotplugProbe,
		AgentDetails: &pb.AgentDetails{
			Version:         version.Version,
			InitDaemon:      os.Getpid() == 1,
			StorageHandlers: d.StorageHandlers,
			DeviceHandlers:  deviceTypes,
			SupportsSeccomp: d.Seccomp,
		},
	}, nil
}

func (v *Service) CreateSandbox(ctx context.Context, req *pb.CreateSandboxRequest) (*emptypb.Empty, error) {
	switch {
	case req.GetSandboxPidns():
		return reply(errdefs.InvalidArgument("sandbox_pidns", "a shared pid namespace is not supported"))
	case req.GetGuestHookPath() != "":
		return reply(errdefs.InvalidArgument("guest_hook_path", "guest hooks are not supported"))
	case len(req.GetKernelModules()) > 0:
		return reply(errdefs.InvalidArgument("kernel_modules", "loading modules is not supported"))
	}
	// dns is left alone: the guest's resolver is Maitred's to set up.
	return reply(v.s.CreateSandbox(ctx, SandboxConfig{
		ID:       req.GetSandboxId(),
		Hostname: req.GetHostname(),
		Storages: storages(req.GetStorages()),
	}))
}

func (v *Service) DestroySandbox(ctx context.Context, _ *pb.DestroySandboxRequest) (*emptypb.Empty, error) {
	return reply(v.s.DestroySandbox(ctx))
}

func (v *Service) CreateContainer(ctx context.Context, req *pb.CreateContainerRequest) (*emptypb.Empty, error) {
	id := req.GetContainerId()
	if err := checkID("container_id", id); err != nil {
		return reply(err)
	}
	switch eid := req.GetExecId(); {
	case eid != "" && eid != id:
		return reply(errdefs.InvalidArgument("exec_id", fmt.Sprintf("%q: the init's exec id is the container's id, or empty", eid)))
	case req.GetStringUser() != nil:
		return reply(errdefs.InvalidArgument("string_user", "not supported; give the user in OCI.Process.User"))
	case req.GetSandboxPidns():
		return reply(errdefs.InvalidArgument("sandbox_pidns", "a shared pid namespace is not supported"))
	}
	spec, err := convertSpec("OCI", req.GetOCI())
	if err != nil {
		return reply(err)
	}
	if err := v.s.Devices(ctx, "devices", devices(req.GetDevices()), spec); err != nil {
		return reply(err)
	}
	return reply(v.s.Create(ctx, id, spec, storages(req.GetStorages())))
}

func (v *Service) StartContainer(ctx context.Context, req *pb.StartContainerRequest) (*emptypb.Empty, error) {
	return reply(v.s.Start(ctx, req.GetContainerId()))
}

func (v *Service) ExecProcess(ctx context.Context, req *pb.ExecProcessRequest) (*emptypb.Empty, error) {
	if req.GetStringUser() != nil {
		return reply(errdefs.InvalidArgument("string_user", "not supported; give the user in process.User"))
	}
	if req.GetProcess() == nil {
		return reply(errdefs.InvalidArgument("process", "must be set"))
	}
	proc, err := convertProcess("process", req.GetProcess())
	if err != nil {
		return reply(err)
	}
	return reply(v.s.Exec(ctx, req.GetContainerId(), req.GetExecId(), proc))
}

func (v *Service) SignalProcess(ctx context.Context, req *pb.SignalProcessRequest) (*emptypb.Empty, error) {
	sig := req.GetSignal()
	if sig == 0 || sig > maxSignal {
		return reply(errdefs.InvalidArgument("signal", fmt.Sprintf("%d is not a signal number", sig)))
	}
	return reply(v.s.Signal(ctx, req.GetContainerId(), req.GetExecId(), syscall.Signal(sig)))
}

func (v *Service) WaitProcess(ctx context.Context, req *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	e, err := v.s.Wait(ctx, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if e.Signal == 0 {
		return &pb.WaitProcessResponse{Status: int32(e.Code)}, nil
	}
	// Kata's agent reports a process a signal killed with the signal's
	// number (not 128+signal, as a shell would); so does cabin's, for the
	// clients written against it. The trailer says it was a signal.
	_ = grpc.SetTrailer(ctx, metadata.Pairs(pb.ExitSignalTrailer, strconv.Itoa(int(e.Signal))))
	return &pb.WaitProcessResponse{Status: int32(e.Signal)}, nil
}

func (v *Service) ReadStdout(ctx context.Context, req *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return v.read(ctx, req, false)
}

func (v *Service) ReadStderr(ctx context.Context, req *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return v.read(ctx, req, true)
}

func (v *Service) read(ctx context.Context, req *pb.ReadStreamRequest, stderr bool) (*pb.ReadStreamResponse, error) {
	return v.readStream(ctx, req, stderr) // stream_reply.go
}

func (v *Service) WriteStdin(ctx context.Context, req *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	n, err := v.s.WriteStdin(ctx, req.GetContainerId(), req.GetExecId(), req.GetData())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.WriteStreamResponse{Len: uint32(n)}, nil
}

func (v *Service) CloseStdin(ctx context.Context, req *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	return reply(v.s.CloseStdin(ctx, req.GetContainerId(), req.GetExecId()))
}

func (v *Service) TtyWinResize(ctx context.Context, req *pb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	return reply(v.s.Resize(ctx, req.GetContainerId(), req.GetExecId(), req.GetRow(), req.GetColumn()))
}

func (v *Service) RemoveContainer(ctx context.Context, req *pb.RemoveContainerRequest) (*emptypb.Empty, error) {
	return reply(v.s.Remove(ctx, req.GetContainerId(), time.Duration(req.GetTimeout())*time.Second))
}

func (v *Service) PauseContainer(ctx context.Context, req *pb.PauseContainerRequest) (*emptypb.Empty, error) {
	return reply(v.s.Pause(ctx, req.GetContainerId()))
}

func (v *Service) ResumeContainer(ctx context.Context, req *pb.ResumeContainerRequest) (*emptypb.Empty, error) {
	return reply(v.s.Resume(ctx, req.GetContainerId()))
}

// storages converts Kata's storages.
func storages(in []*pb.Storage) []Storage {
	var out []Storage
	for _, s := range in {
		out = append(out, Storage{
			Driver:        s.GetDriver(),
			DriverOptions: s.GetDriverOptions(),
			Source:        s.GetSource(),
			FSType:        s.GetFstype(),
			Options:       s.GetOptions(),
			MountPoint:    s.GetMountPoint(),
			FSGroup:       s.GetFsGroup() != nil,
		})
	}
	return out
}
