package concierge

import (
	"context"
	"errors"
	"fmt"

	pb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/vmm"
)

// DiskKey is the image a disk request names, in the owner its caller acts
// as (cryptohome_id is concierge's owner id), validated; its error is a
// gRPC status.
func DiskKey(ctx context.Context, owner, name string) (diskimage.Key, error) {
	owner, err := caller.FromContext(ctx).Owner(owner)
	if err != nil {
		return diskimage.Key{}, errgrpc.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return diskimage.Key{}, errgrpc.ToGRPC(err)
	}
	key := diskimage.Key{Owner: owner, Name: name}
	if err := key.Validate(); err != nil {
		return diskimage.Key{}, errgrpc.ToGRPC(err)
	}
	return key, nil
}

// DiskFailure sorts a disk call's error: a bad request (a bad name or
// size, an owner not the caller's, what cabin does not do) is a gRPC
// error, as for every API of cabin's; the rest is reported in the
// response's status and failure_reason, as upstream does.
func DiskFailure(err error) (pb.DiskImageStatus, string, error) {
	switch {
	case errors.Is(err, diskimage.ErrBadImage), errors.Is(err, diskimage.ErrNotEnoughSpace),
		errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrNotFound):
		return DiskStatus(diskimage.StatusOf(err)), err.Error(), nil
	case errors.Is(err, errdefs.ErrInvalidArgument), errors.Is(err, errdefs.ErrPermissionDenied),
		errors.Is(err, errdefs.ErrNotImplemented), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return 0, "", errgrpc.ToGRPC(err)
	}
	return pb.DiskImageStatus_DISK_STATUS_FAILED, err.Error(), nil
}

// DiskStatus converts a disk operation's status; the values are
// concierge's.
func DiskStatus(st diskimage.Status) pb.DiskImageStatus { return pb.DiskImageStatus(st) }

// DiskProgress converts an operation's state to concierge's
// DiskImageStatusResponse, which is also its DiskImageProgress signal.
func DiskProgress(p diskimage.Progress) *pb.DiskImageStatusResponse {
	return &pb.DiskImageStatusResponse{
		CommandUuid: p.UUID, Status: DiskStatus(p.Status), FailureReason: p.Reason, Progress: p.Percent,
	}
}

// DiskLocation converts a storage location.
func DiskLocation(l pb.StorageLocation) (diskimage.Location, error) {
	switch l {
	case pb.StorageLocation_STORAGE_CRYPTOHOME_ROOT:
		return diskimage.LocationRoot, nil
	case pb.StorageLocation_STORAGE_CRYPTOHOME_PLUGINVM:
		return diskimage.LocationPluginVM, nil
	}
	return 0, errgrpc.ToGRPC(errdefs.InvalidArgument("storage_location", fmt.Sprintf("unknown location %d", l)))
}

func location(l diskimage.Location) pb.StorageLocation {
	if l == diskimage.LocationPluginVM {
		return pb.StorageLocation_STORAGE_CRYPTOHOME_PLUGINVM
	}
	return pb.StorageLocation_STORAGE_CRYPTOHOME_ROOT
}

func imageType(f diskimage.Format) pb.DiskImageType {
	if f == diskimage.FormatQcow2 {
		return pb.DiskImageType_DISK_IMAGE_QCOW2
	}
	return pb.DiskImageType_DISK_IMAGE_RAW
}

func (s *Server) CreateDiskImage(ctx context.Context, req *pb.CreateDiskImageRequest) (*pb.CreateDiskImageResponse, error) {
	key, err := DiskKey(ctx, req.GetCryptohomeId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	loc, err := DiskLocation(req.GetStorageLocation())
	if err != nil {
		return nil, err
	}
	if req.GetCopyBaguetteImage() {
		return nil, errgrpc.ToGRPC(fmt.Errorf("copy_baguette_image: not supported: %w", errdefs.ErrNotImplemented))
	}
	dreq := diskimage.CreateRequest{
		Key: key, Location: loc, Size: req.GetDiskSize(),
		Allocation:        diskimage.Allocation(req.GetAllocationType()),
		StorageBallooning: req.GetStorageBallooning(),
		VMType:            int32(req.GetVmType()), HasVMType: req.GetVmType() != pb.VmInfo_UNKNOWN,
	}
	switch req.GetImageType() {
	case pb.DiskImageType_DISK_IMAGE_RAW, pb.DiskImageType_DISK_IMAGE_AUTO:
		dreq.Format = diskimage.FormatRaw
	case pb.DiskImageType_DISK_IMAGE_QCOW2:
		dreq.Format = diskimage.FormatQcow2
	default:
		return nil, errgrpc.ToGRPC(fmt.Errorf("image_type %s: not supported: %w", req.GetImageType(), errdefs.ErrNotImplemented))
	}
	switch req.GetFilesystemType() {
	case pb.FilesystemType_UNSPECIFIED:
		// Upstream passes no options to a filesystem it does not make.
	case pb.FilesystemType_EXT4:
		dreq.Filesystem = diskimage.FilesystemExt4
		dreq.MkfsOpts, dreq.Tune2fsOpts = req.GetMkfsOpts(), req.GetTune2FsOpts()
	default:
		return nil, errgrpc.ToGRPC(errdefs.InvalidArgument("filesystem_type", fmt.Sprintf("unknown filesystem %d", req.GetFilesystemType())))
	}
	res, err := s.disks.Create(ctx, dreq)
	if err != nil {
		st, reason, rpcErr := DiskFailure(err)
		if rpcErr != nil {
			return nil, rpcErr
		}
		return &pb.CreateDiskImageResponse{Status: st, FailureReason: reason}, nil
	}
	st := pb.DiskImageStatus_DISK_STATUS_CREATED
	if res.Existed {
		st = pb.DiskImageStatus_DISK_STATUS_EXISTS
	}
	return &pb.CreateDiskImageResponse{Status: st, DiskPath: res.Path}, nil
}

func (s *Server) DestroyDiskImage(ctx context.Context, req *pb.DestroyDiskImageRequest) (*pb.DestroyDiskImageResponse, error) {
	key, err := DiskKey(ctx, req.GetCryptohomeId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	existed, err := s.disks.Destroy(ctx, key)
	if err != nil {
		st, reason, rpcErr := DiskFailure(err)
		if rpcErr != nil {
			return nil, rpcErr
		}
		return &pb.DestroyDiskImageResponse{Status: st, FailureReason: reason}, nil
	}
	if !existed {
		return &pb.DestroyDiskImageResponse{Status: pb.DiskImageStatus_DISK_STATUS_DOES_NOT_EXIST}, nil
	}
	// The VM's GPU cache goes with its disk, as upstream's.
	s.m.RemoveGPUCache(vmm.Key{Owner: key.Owner, Name: key.Name})
	return &pb.DestroyDiskImageResponse{Status: pb.DiskImageStatus_DISK_STATUS_DESTROYED}, nil
}

func (s *Server) ResizeDiskImage(ctx context.Context, req *pb.ResizeDiskImageRequest) (*pb.ResizeDiskImageResponse, error) {
	key, err := DiskKey(ctx, req.GetCryptohomeId(), req.GetVmName())
	if err != nil {
		return nil, err
	}
	op, err := s.disks.Resize(ctx, key, req.GetDiskSize())
	if err != nil {
		st, reason, rpcErr := DiskFailure(err)
		if rpcErr != nil {
			return nil, rpcErr
		}
		return &pb.ResizeDiskImageResponse{Status: st, FailureReason: reason}, nil
	}
	return &pb.ResizeDiskImageResponse{Status: pb.DiskImageStatus_DISK_STATUS_IN_PROGRESS, CommandUuid: op.UUID()}, nil
}

// ExportDiskImage and ImportDiskImage take the image's bytes as file
// descriptors upstream, which gRPC cannot carry: they answer, in the
// body as upstream answers a missing descriptor, where the bytes go.

func (s *Server) ExportDiskImage(ctx context.Context, req *pb.ExportDiskImageRequest) (*pb.ExportDiskImageResponse, error) {
	if _, err := DiskKey(ctx, req.GetCryptohomeId(), req.GetVmName()); err != nil {
		return nil, err
	}
	return &pb.ExportDiskImageResponse{
		Status:        pb.DiskImageStatus_DISK_STATUS_FAILED,
		FailureReason: "export needs a destination, which gRPC cannot pass as a file descriptor: call cabin.v1.Disks/Export",
	}, nil
}

func (s *Server) ImportDiskImage(ctx context.Context, req *pb.ImportDiskImageRequest) (*pb.ImportDiskImageResponse, error) {
	if _, err := DiskKey(ctx, req.GetCryptohomeId(), req.GetVmName()); err != nil {
		return nil, err
	}
	return &pb.ImportDiskImageResponse{
		Status:        pb.DiskImageStatus_DISK_STATUS_FAILED,
		FailureReason: "import needs a source, which gRPC cannot pass as a file descriptor: call cabin.v1.Disks/Import",
	}, nil
}

func (s *Server) DiskImageStatus(ctx context.Context, req *pb.DiskImageStatusRequest) (*pb.DiskImageStatusResponse, error) {
	op, err := s.disks.Lookup(req.GetCommandUuid(), caller.FromContext(ctx).Sees)
	if err != nil {
		return &pb.DiskImageStatusResponse{
			CommandUuid: req.GetCommandUuid(), Status: pb.DiskImageStatus_DISK_STATUS_FAILED, FailureReason: err.Error(),
		}, nil
	}
	return DiskProgress(op.Progress()), nil
}

func (s *Server) CancelDiskImageOperation(ctx context.Context, req *pb.CancelDiskImageRequest) (*pb.SuccessFailureResponse, error) {
	op, err := s.disks.Lookup(req.GetCommandUuid(), caller.FromContext(ctx).Sees)
	if err == nil {
		err = op.Cancel(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, errgrpc.ToGRPC(ctx.Err())
		}
		return &pb.SuccessFailureResponse{FailureReason: err.Error()}, nil
	}
	return &pb.SuccessFailureResponse{Success: true}, nil
}

func (s *Server) ListVmDisks(ctx context.Context, req *pb.ListVmDisksRequest) (*pb.ListVmDisksResponse, error) {
	owner, err := caller.FromContext(ctx).Owner(req.GetCryptohomeId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := vmm.ValidateOwner(owner); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var locs []diskimage.Location
	if !req.GetAllLocations() {
		loc, err := DiskLocation(req.GetStorageLocation())
		if err != nil {
			return nil, err
		}
		locs = []diskimage.Location{loc}
	}
	l, err := s.disks.List(ctx, owner, locs, req.GetVmName())
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalidArgument) {
			return nil, errgrpc.ToGRPC(err)
		}
		return &pb.ListVmDisksResponse{FailureReason: err.Error()}, nil
	}
	resp := &pb.ListVmDisksResponse{Success: true, TotalSize: uint64(l.Total())}
	for _, im := range l.Images {
		resp.Images = append(resp.Images, &pb.VmDiskInfo{
			Name: im.Name, StorageLocation: location(im.Location), Size: uint64(im.Size), MinSize: uint64(im.MinSize),
			ImageType: imageType(im.Format), UserChosenSize: im.UserChosenSize, Path: im.Path,
			AvailableSpace: uint64(l.Available), VmType: pb.VmInfo_VmType(im.VMType), HasVmType: im.HasVMType,
		})
	}
	return resp, nil
}
