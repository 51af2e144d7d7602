// Package errgrpc maps cabin's error categories (internal/errdefs) to gRPC
// status codes: the one mapping every gRPC edge uses, host and guest, so
// that no service builds a status by hand or switches on codes.
package errgrpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/internal/errdefs"
)

var codeOf = []struct {
	err  error
	code codes.Code
}{
	{errdefs.ErrInvalidArgument, codes.InvalidArgument},
	{errdefs.ErrNotFound, codes.NotFound},
	{errdefs.ErrAlreadyExists, codes.AlreadyExists},
	{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
	{errdefs.ErrUnavailable, codes.Unavailable},
	{errdefs.ErrNotImplemented, codes.Unimplemented},
	{errdefs.ErrResourceExhausted, codes.ResourceExhausted},
	{errdefs.ErrPermissionDenied, codes.PermissionDenied},
	{errdefs.ErrInternal, codes.Internal},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// Code is the gRPC code for err's category; Unknown when it has none. An
// error that already carries a status keeps its code.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codes.Unknown
}

// ToGRPC turns err into a gRPC status error with its category's code and
// its full message. Errors that already carry a status (one relayed from a
// guest, say) pass through.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// Errorf is ToGRPC of errdefs.Errorf: a status error in the category kind.
// It is for transports that fail a call on their own account (a frame too
// large, a message that does not decode), where there is no domain error to
// map.
func Errorf(kind error, format string, args ...any) error {
	return ToGRPC(errdefs.Errorf(kind, format, args...))
}
