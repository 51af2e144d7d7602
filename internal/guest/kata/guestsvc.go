package kata

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// The edge of the guest-wide calls, the volume calls and CopyFile.

func (v *Service) CopyFile(ctx context.Context, req *pb.CopyFileRequest) (*emptypb.Empty, error) {
	return reply(v.s.CopyFile(ctx, CopyRequest{
		Path:     req.GetPath(),
		FileSize: req.GetFileSize(),
		FileMode: req.GetFileMode(),
		DirMode:  req.GetDirMode(),
		UID:      req.GetUid(),
		GID:      req.GetGid(),
		Offset:   req.GetOffset(),
		Data:     req.GetData(),
	}))
}

func (v *Service) OnlineCPUMem(ctx context.Context, req *pb.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return reply(v.s.OnlineCPUMem(ctx, req.GetNbCpus(), req.GetCpuOnly(), req.GetWait()))
}

func (v *Service) ReseedRandomDev(ctx context.Context, req *pb.ReseedRandomDevRequest) (*emptypb.Empty, error) {
	return reply(v.s.ReseedRandomDev(ctx, req.GetData()))
}

func (v *Service) MemHotplugByProbe(ctx context.Context, req *pb.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return reply(v.s.MemHotplugByProbe(ctx, req.GetMemHotplugProbeAddr()))
}

func (v *Service) SetGuestDateTime(ctx context.Context, req *pb.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	return reply(v.s.SetGuestDateTime(ctx, req.GetSec(), req.GetUsec()))
}

func (v *Service) AddSwap(ctx context.Context, req *pb.AddSwapRequest) (*emptypb.Empty, error) {
	return reply(v.s.AddSwap(ctx, req.GetPCIPath()))
}

func (v *Service) GetVolumeStats(ctx context.Context, req *pb.VolumeStatsRequest) (*pb.VolumeStatsResponse, error) {
	st, err := v.s.VolumeStats(ctx, req.GetVolumeGuestPath())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	usage := func(u VolumeUsage, unit pb.VolumeUsage_Unit) *pb.VolumeUsage {
		return &pb.VolumeUsage{Available: u.Available, Total: u.Total, Used: u.Used, Unit: unit}
	}
	return &pb.VolumeStatsResponse{
		Usage:           []*pb.VolumeUsage{usage(st.Bytes, pb.VolumeUsage_BYTES), usage(st.Inodes, pb.VolumeUsage_INODES)},
		VolumeCondition: &pb.VolumeCondition{Abnormal: false, Message: "OK"},
	}, nil
}

func (v *Service) ResizeVolume(ctx context.Context, req *pb.ResizeVolumeRequest) (*emptypb.Empty, error) {
	return reply(v.s.ResizeVolume(ctx, req.GetVolumeGuestPath(), req.GetSize()))
}

func (v *Service) UpdateEphemeralMounts(ctx context.Context, req *pb.UpdateEphemeralMountsRequest) (*emptypb.Empty, error) {
	return reply(v.s.UpdateEphemeralMounts(ctx, storages(req.GetStorages())))
}

func (v *Service) RemoveStaleVirtiofsShareMounts(ctx context.Context, _ *pb.RemoveStaleVirtiofsShareMountsRequest) (*emptypb.Empty, error) {
	return reply(v.s.RemoveStaleVirtiofsShareMounts(ctx))
}

// devices converts Kata's devices.
func devices(in []*pb.Device) []Device {
	var out []Device
	for _, d := range in {
		out = append(out, Device{ID: d.GetId(), Type: d.GetType(), VMPath: d.GetVmPath(), ContainerPath: d.GetContainerPath(), Options: d.GetOptions()})
	}
	return out
}
