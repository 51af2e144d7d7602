package errgrpc

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestToGRPC(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("vm %q: %w", "x", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("start: %w", errdefs.InvalidArgument("name", "empty")), codes.InvalidArgument},
		{errdefs.Errorf(errdefs.ErrPermissionDenied, "vm %q: not yours", "x"), codes.PermissionDenied},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("call: %w", context.Canceled), codes.Canceled},
		{status.Error(codes.Aborted, "x"), codes.Aborted},
		{fmt.Errorf("plain"), codes.Unknown},
		{nil, codes.OK},
	} {
		got := status.Code(ToGRPC(c.err))
		if got != c.code {
			t.Errorf("%v: code %v, want %v", c.err, got, c.code)
		}
		if Code(c.err) != c.code {
			t.Errorf("%v: Code %v, want %v", c.err, Code(c.err), c.code)
		}
	}
	if msg := status.Convert(ToGRPC(errdefs.InvalidArgument("cpus", "must be at least 1"))).Message(); msg != "cpus: must be at least 1" {
		t.Errorf("message %q does not name the field", msg)
	}
	err := Errorf(errdefs.ErrResourceExhausted, "frame of %d bytes", 9)
	if s := status.Convert(err); s.Code() != codes.ResourceExhausted || s.Message() != "frame of 9 bytes" {
		t.Errorf("Errorf = %v", err)
	}
}
