package concierge

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// The calls for hardware or guests this host cannot have. Each is
// refused with what is missing: success=false where the response has a
// success field, FAILED_PRECONDITION where it has none. The README lists
// them (Refusals).
const (
	noARCVM = "cabin cannot run ARCVM: it boots Android's system and vendor images with crosvm's Android devices " +
		"(virtio-wayland, pmem, the ARC bridge), and this host has neither the images nor crosvm; cabin runs Linux guests under QEMU"
	noARCVMRunning = "no ARC VM runs here: " + noARCVM
	noPluginVM     = "cabin cannot run Plugin VMs: they are run by Parallels Desktop's vmplugin_dispatcher service, " +
		"with its license, which this host does not have"
	noPflash = "cabin's VMs take no pflash: they boot a kernel directly, without the UEFI firmware (OVMF) a pflash image " +
		"is for, and a request here cannot carry the image's file descriptor"
	noSwap = "vmm-swap is crosvm's (guest memory staged and swapped to disk by the VMM); QEMU has no vmm-swap, " +
		"so there is nothing to enable, disable or force out"
	noFakePower = "a fake battery needs a goldfish battery device in the VM, which QEMU's machines (microvm, q35) do not have"
	noAudio     = "cabin's VMs have no audio device (no virtio-snd, and this host has no sound server for one): there is nothing to mute"
	noMesa      = "cabin's VMs have no GPU (no virtio-gpu), so there is no Mesa shader cache to open to a group"
	noKey       = "attaching a security key needs crosvm's hidraw-backed USB security key device; QEMU has none, " +
		"and this host has no hidraw security key to pass"
	noBaguette = "cabin has no Baguette image to point to: Baguette is ChromeOS's Debian VM image for crosvm, " +
		"pinned in concierge's build; cabin's VMs boot cabin's own guest image (cabin image build)"
	noKillsServer = "the VM memory management kills server is ChromeOS resourced's vsock service, and its answer " +
		"carries a file descriptor gRPC cannot; this host has neither vsock nor resourced"
)

func (s *Server) StartArcVm(context.Context, *pb.StartArcVmRequest) (*pb.StartVmResponse, error) {
	return &pb.StartVmResponse{FailureReason: noARCVM, Status: pb.VmStatus_VM_STATUS_FAILURE}, nil
}

func (s *Server) ArcVmCompleteBoot(context.Context, *pb.ArcVmCompleteBootRequest) (*pb.ArcVmCompleteBootResponse, error) {
	return nil, errgrpc.Errorf(errdefs.ErrFailedPrecondition, "%s", noARCVMRunning)
}

func (s *Server) StartPluginVm(context.Context, *pb.StartPluginVmRequest) (*pb.StartVmResponse, error) {
	return &pb.StartVmResponse{FailureReason: noPluginVM, Status: pb.VmStatus_VM_STATUS_FAILURE}, nil
}

func (s *Server) InstallPflash(context.Context, *pb.InstallPflashRequest) (*pb.SuccessFailureResponse, error) {
	return &pb.SuccessFailureResponse{FailureReason: noPflash}, nil
}

func (s *Server) SwapVm(context.Context, *pb.SwapVmRequest) (*pb.SuccessFailureResponse, error) {
	return &pb.SuccessFailureResponse{FailureReason: noSwap}, nil
}

func (s *Server) ModifyFakePowerConfig(context.Context, *pb.ModifyFakePowerConfigRequest) (*pb.SuccessFailureResponse, error) {
	return &pb.SuccessFailureResponse{FailureReason: noFakePower}, nil
}

func (s *Server) MuteVmAudio(context.Context, *pb.MuteVmAudioRequest) (*pb.SuccessFailureResponse, error) {
	return &pb.SuccessFailureResponse{FailureReason: noAudio}, nil
}

func (s *Server) AddGroupPermissionMesa(context.Context, *pb.AddGroupPermissionMesaRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.Errorf(errdefs.ErrFailedPrecondition, "%s", noMesa)
}

func (s *Server) AttachKey(context.Context, *pb.AttachKeyRequest) (*pb.AttachKeyResponse, error) {
	return &pb.AttachKeyResponse{Reason: noKey}, nil
}

func (s *Server) GetBaguetteImageUrl(context.Context, *emptypb.Empty) (*pb.GetBaguetteImageUrlResponse, error) {
	return nil, errgrpc.Errorf(errdefs.ErrFailedPrecondition, "%s", noBaguette)
}

func (s *Server) GetVmMemoryManagementKillsConnection(context.Context, *pb.GetVmMemoryManagementKillsConnectionRequest) (*pb.GetVmMemoryManagementKillsConnectionResponse, error) {
	return &pb.GetVmMemoryManagementKillsConnectionResponse{FailureReason: noKillsServer}, nil
}
