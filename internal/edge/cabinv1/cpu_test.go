package cabinv1

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/grpctest"
	"github.com/cabinvm/cabin/internal/hostcgroup"
)

type quotas struct {
	calls []string
	err   error
}

func (q *quotas) RestrictQuota(_ context.Context, class hostcgroup.Class, percent int) error {
	q.calls = append(q.calls, string(class)+" "+strconv.Itoa(percent))
	return q.err
}

func TestSetCpuQuota(t *testing.T) {
	q := &quotas{}
	cc := grpctest.Serve(t, func(s *grpc.Server) { pb.RegisterCpuServer(s, NewCPU(q)) }, grpctest.UIDs()...)
	c := pb.NewCpuClient(cc)
	ctx := context.Background()
	r, err := c.SetCpuQuota(ctx, &pb.SetCpuQuotaRequest{CpuCgroup: conciergepb.CpuCgroup_CPU_CGROUP_TERMINA, QuotaPercent: 40})
	if err != nil || !r.GetSuccess() || strings.Join(q.calls, ",") != "termina 40" {
		t.Fatalf("quota: %v, %v, %q", r, err, q.calls)
	}
	for _, bad := range []int32{0, -5, 101} {
		_, err := c.SetCpuQuota(ctx, &pb.SetCpuQuotaRequest{CpuCgroup: conciergepb.CpuCgroup_CPU_CGROUP_ARCVM, QuotaPercent: bad})
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "quota_percent:") {
			t.Errorf("quota %d: %v", bad, err)
		}
	}
	if _, err := c.SetCpuQuota(ctx, &pb.SetCpuQuotaRequest{CpuCgroup: 9, QuotaPercent: 10}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("cgroup 9: %v", err)
	}
	if _, err := c.SetCpuQuota(grpctest.AsUID(1000), &pb.SetCpuQuotaRequest{QuotaPercent: 10}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a user: %v", err)
	}
	if len(q.calls) != 1 {
		t.Errorf("refused requests restricted something: %q", q.calls)
	}
	// A host without cgroups: success=false, as concierge answers.
	q.err = errdefs.Errorf(errdefs.ErrFailedPrecondition, "no CPU cgroups here")
	if r, err := c.SetCpuQuota(ctx, &pb.SetCpuQuotaRequest{QuotaPercent: 10}); err != nil || r.GetSuccess() {
		t.Errorf("no cgroups: %v, %v", r, err)
	}
}
