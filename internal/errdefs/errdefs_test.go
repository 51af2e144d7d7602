package errdefs

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToGRPC(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("vm %q: %w", "x", ErrNotFound), codes.NotFound},
		{fmt.Errorf("start: %w", InvalidArgument("name", "empty")), codes.InvalidArgument},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{status.Error(codes.Aborted, "x"), codes.Aborted},
		{fmt.Errorf("plain"), codes.Unknown},
	} {
		got := status.Code(ToGRPC(c.err))
		if got != c.code {
			t.Errorf("%v: code %v, want %v", c.err, got, c.code)
		}
	}
	if msg := status.Convert(ToGRPC(InvalidArgument("cpus", "must be at least 1"))).Message(); msg != "cpus: must be at least 1" {
		t.Errorf("message %q does not name the field", msg)
	}
}
