package guestlink

import (
	"context"
	"fmt"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/vmm"
)

var _ vmm.StorageGuest = (*Link)(nil)

// Mount mounts a block device in the guest (Maitred.Mount), making the
// target if it is missing. The mount's errno, which Maitred answers in
// the response, is the error.
func (l *Link) Mount(ctx context.Context, mt vmm.GuestMount) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	r, err := m.Mount(ctx, &vmtools.MountRequest{
		Source: mt.Source, Target: mt.Target, Fstype: mt.FSType,
		Mountflags: mt.Flags, Options: mt.Data, CreateTarget: true,
	})
	if err != nil {
		return guestError("mount", err)
	}
	return errnoError("mount "+mt.Source+" on "+mt.Target, r.GetError())
}

// Mount9P mounts the host folder shared as bootcfg.ShareTag(n) on
// target (Maitred.Mount9P, whose port names the share in cabin).
func (l *Link) Mount9P(ctx context.Context, n uint32, target string) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	r, err := m.Mount9P(ctx, &vmtools.Mount9PRequest{Port: n, Target: target})
	if err != nil {
		return guestError("mount share", err)
	}
	return errnoError(fmt.Sprintf("mount share %d on %s", n, target), r.GetError())
}

// StartTermina mounts the stateful disk (Maitred.StartTermina). An image
// without tremplin answers FAILED_PRECONDITION naming it once the disk is
// mounted (docs/guest.md): the disk is ready, and no containers will
// come, which the result says; the free space is then
// GetAvailableSpace's.
func (l *Link) StartTermina(ctx context.Context, req vmm.TerminaRequest) (vmm.TerminaResult, error) {
	m, err := l.maitred(ctx)
	if err != nil {
		return vmm.TerminaResult{}, err
	}
	var features []vmtools.StartTerminaRequest_Feature
	for _, f := range req.Features {
		features = append(features, vmtools.StartTerminaRequest_Feature(f))
	}
	r, err := m.StartTermina(ctx, &vmtools.StartTerminaRequest{StatefulDevice: req.Device, Feature: features})
	if err == nil {
		return vmm.TerminaResult{FreeBytes: uint64(max(r.GetFreeBytes(), 0))}, nil
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition && strings.Contains(st.Message(), "tremplin") {
		res := vmm.TerminaResult{NoContainers: st.Message()}
		if sp, err := m.GetAvailableSpace(ctx, &vmtools.EmptyMessage{}); err == nil {
			res.FreeBytes = sp.GetAvailableSpace()
		}
		return res, nil
	}
	return vmm.TerminaResult{}, guestError("start termina", err)
}

// ResizeFilesystem starts the stateful filesystem's resize to size bytes
// (Maitred.ResizeFilesystem); ResizeStatus follows it.
func (l *Link) ResizeFilesystem(ctx context.Context, size uint64) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	r, err := m.ResizeFilesystem(ctx, &vmtools.ResizeFilesystemRequest{Size: size})
	if err != nil {
		return guestError("resize the filesystem", err)
	}
	switch r.GetStatus() {
	case vmtools.ResizeFilesystemResponse_STARTED:
		return nil
	case vmtools.ResizeFilesystemResponse_ALREADY_IN_PROGRESS:
		return fmt.Errorf("resize the filesystem: another resize is under way: %w", errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("resize the filesystem to %d bytes: the guest could not start it (its log says why): %w", size, errdefs.ErrInternal)
}

// ResizeStatus is how the stateful filesystem's resize goes
// (Maitred.GetResizeStatus).
func (l *Link) ResizeStatus(ctx context.Context) (vmm.ResizeStatus, error) {
	m, err := l.maitred(ctx)
	if err != nil {
		return vmm.ResizeStatus{}, err
	}
	r, err := m.GetResizeStatus(ctx, &vmtools.EmptyMessage{})
	if err != nil {
		return vmm.ResizeStatus{}, guestError("resize status", err)
	}
	return vmm.ResizeStatus{InProgress: r.GetResizeInProgress(), Current: r.GetCurrentSize(), Target: r.GetTargetSize()}, nil
}

// errnoError is a mount's errno as Maitred answers it (0: none).
func errnoError(what string, errno int32) error {
	if errno == 0 {
		return nil
	}
	return fmt.Errorf("%s: %w", what, syscall.Errno(errno))
}

// guestError keeps the category of a guest's gRPC error, so the manager
// can tell a precondition (no stateful disk yet) from a failure.
func guestError(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	kind := errdefs.ErrInternal
	switch st.Code() {
	case codes.FailedPrecondition:
		kind = errdefs.ErrFailedPrecondition
	case codes.InvalidArgument:
		kind = errdefs.ErrInvalidArgument
	case codes.NotFound:
		kind = errdefs.ErrNotFound
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
		kind = errdefs.ErrUnavailable
	}
	return errdefs.Errorf(kind, "%s: %s", what, st.Message())
}
