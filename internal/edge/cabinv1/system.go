package cabinv1

import (
	"context"

	cabinpb "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/hostinfo"
)

// System serves cabin.v1.System: versions and the host's facts.
type System struct {
	cabinpb.UnimplementedSystemServer
	src *hostinfo.Source
}

// NewSystem returns the service over src.
func NewSystem(src *hostinfo.Source) *System { return &System{src: src} }

func (s *System) Version(ctx context.Context, _ *cabinpb.VersionRequest) (*cabinpb.VersionResponse, error) {
	v := s.src.Version(ctx)
	return &cabinpb.VersionResponse{
		Cabind: v.Cabind, Go: v.Go, Agent: v.Agent, GuestKernel: v.GuestKernel,
		Accel: string(v.Accel), Qemu: v.QEMU,
	}, nil
}

func (s *System) Info(ctx context.Context, _ *cabinpb.InfoRequest) (*cabinpb.InfoResponse, error) {
	in := s.src.Info(ctx)
	resp := &cabinpb.InfoResponse{
		QemuBinary: in.QEMUBinary, QemuVersion: in.QEMUVersion,
		Accel: string(in.Accel), AccelReason: in.AccelReason,
		VhostVsock: in.VhostVsock, VhostVsockReason: in.VhostVsockReason, VhostNet: in.VhostNet,
		StateDir: in.StateDir, StateDirFreeBytes: in.StateFree, StateDirTotalBytes: in.StateTotal,
		ImageKernel: in.ImageKernel, ImageInitramfsBytes: in.ImageInitramfsBytes,
		ImageCacheBytes: in.ImageCacheBytes,
		HostKernel:      in.HostKernel, HostCpus: int32(in.HostCPUs), HostMemoryBytes: in.HostMemory,
		Network: in.Network, VmsRunning: int32(in.Running),
	}
	if !in.ImageBuiltAt.IsZero() {
		resp.ImageBuiltAt = in.ImageBuiltAt.UTC().Format("2006-01-02T15:04:05Z")
	}
	return resp, nil
}
