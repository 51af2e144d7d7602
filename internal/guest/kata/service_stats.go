package kata

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// The cgroup calls: UpdateContainer, StatsContainer, GetOOMEvent, and
// GetMetrics beside them.

func (v *Service) UpdateContainer(ctx context.Context, req *pb.UpdateContainerRequest) (*emptypb.Empty, error) {
	r, err := resources(req.GetResources())
	if err != nil {
		return reply(err)
	}
	return reply(v.s.Update(ctx, req.GetContainerId(), r))
}

// resources converts linux.resources; what UpdateContainer cannot apply
// is refused here, naming the field.
func resources(in *pb.LinuxResources) (cgroup.Resources, error) {
	var r cgroup.Resources
	if in == nil {
		return r, errdefs.InvalidArgument("resources", "must be set")
	}
	if len(in.GetDevices()) > 0 {
		return r, errdefs.InvalidArgument("resources.Devices", "device rules cannot be changed on a running container")
	}
	if n := in.GetNetwork(); n != nil && (n.GetClassID() != 0 || len(n.GetPriorities()) > 0) {
		return r, errdefs.InvalidArgument("resources.Network", "cgroup v2 has no network class or priorities")
	}
	if m := in.GetMemory(); m != nil {
		r.MemoryLimit, r.MemoryReservation, r.MemorySwap = m.GetLimit(), m.GetReservation(), m.GetSwap()
		r.MemoryKernel, r.MemoryKernelTCP = m.GetKernel(), m.GetKernelTCP()
		r.Swappiness, r.DisableOOMKiller = m.GetSwappiness(), m.GetDisableOOMKiller()
	}
	if c := in.GetCPU(); c != nil {
		r.CPUShares, r.CPUQuota, r.CPUPeriod = c.GetShares(), c.GetQuota(), c.GetPeriod()
		r.CPURealtimeRuntime, r.CPURealtimePeriod = c.GetRealtimeRuntime(), c.GetRealtimePeriod()
		r.CPUs, r.Mems = c.GetCpus(), c.GetMems()
	}
	if p := in.GetPids(); p != nil {
		r.Pids = p.GetLimit()
	}
	if b := in.GetBlockIO(); b != nil {
		r.BlkioWeight, r.BlkioLeafWeight = b.GetWeight(), b.GetLeafWeight()
		for _, d := range b.GetWeightDevice() {
			if d.GetLeafWeight() != 0 {
				return r, errdefs.InvalidArgument("resources.BlockIO.WeightDevice", "cgroup v2 has no leaf weight")
			}
			r.BlkioWeightDevices = append(r.BlkioWeightDevices, cgroup.WeightDevice{Major: d.GetMajor(), Minor: d.GetMinor(), Weight: d.GetWeight()})
		}
		r.BlkioThrottleReadBps = cgThrottles(b.GetThrottleReadBpsDevice())
		r.BlkioThrottleWriteBps = cgThrottles(b.GetThrottleWriteBpsDevice())
		r.BlkioThrottleReadIOPS = cgThrottles(b.GetThrottleReadIOPSDevice())
		r.BlkioThrottleWriteIOPS = cgThrottles(b.GetThrottleWriteIOPSDevice())
	}
	for _, h := range in.GetHugepageLimits() {
		r.Hugepages = append(r.Hugepages, cgroup.HugepageLimit{Pagesize: h.GetPagesize(), Limit: h.GetLimit()})
	}
	return r, nil
}

func cgThrottles(in []*pb.LinuxThrottleDevice) []cgroup.ThrottleDevice {
	var out []cgroup.ThrottleDevice
	for _, d := range in {
		out = append(out, cgroup.ThrottleDevice{Major: d.GetMajor(), Minor: d.GetMinor(), Rate: d.GetRate()})
	}
	return out
}

func (v *Service) StatsContainer(ctx context.Context, req *pb.StatsContainerRequest) (*pb.StatsContainerResponse, error) {
	st, err := v.s.Stats(ctx, req.GetContainerId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return statsResponse(st), nil
}

// statsResponse fills the reply as Kata's agent does on cgroup v2, in
// runc's v1-compatible terms (nanoseconds, memory+swap, blkio tables),
// which is what a Kata shim turns into containerd's v2 metrics.
func statsResponse(st ContainerStats) *pb.StatsContainerResponse {
	c := st.Cgroup
	mem := c.Memory
	resp := &pb.StatsContainerResponse{CgroupStats: &pb.CgroupStats{
		CpuStats: &pb.CpuStats{
			// cgroup v2 has no per-CPU usage: percpu_usage stays empty.
			CpuUsage: &pb.CpuUsage{TotalUsage: c.CPU.Usage, UsageInKernelmode: c.CPU.System, UsageInUsermode: c.CPU.User},
			ThrottlingData: &pb.ThrottlingData{Periods: c.CPU.Periods, ThrottledPeriods: c.CPU.ThrottledPeriods,
				ThrottledTime: c.CPU.ThrottledTime},
		},
		MemoryStats: &pb.MemoryStats{
			Cache:        mem.Cache,
			Usage:        &pb.MemoryData{Usage: mem.Usage, MaxUsage: mem.MaxUsage, Failcnt: mem.Failcnt, Limit: mem.Limit},
			SwapUsage:    &pb.MemoryData{Usage: mem.SwapUsage, Limit: mem.SwapLimit},
			KernelUsage:  &pb.MemoryData{Usage: mem.Stat["kernel"]},
			UseHierarchy: true,
			Stats:        mem.Stat,
		},
		PidsStats:  &pb.PidsStats{Current: c.Pids.Current, Limit: c.Pids.Limit},
		BlkioStats: &pb.BlkioStats{},
	}}
	b := resp.CgroupStats.BlkioStats
	for _, e := range c.IO {
		entry := &pb.BlkioStatsEntry{Major: e.Major, Minor: e.Minor, Op: e.Op, Value: e.Value}
		switch e.Table {
		case "service_bytes":
			b.IoServiceBytesRecursive = append(b.IoServiceBytesRecursive, entry)
		case "serviced":
			b.IoServicedRecursive = append(b.IoServicedRecursive, entry)
		}
	}
	if len(c.Hugetlb) > 0 {
		resp.CgroupStats.HugetlbStats = map[string]*pb.HugetlbStats{}
		for size, h := range c.Hugetlb {
			resp.CgroupStats.HugetlbStats[size] = &pb.HugetlbStats{Usage: h.Usage, MaxUsage: h.MaxUsage, Failcnt: h.Failcnt}
		}
	}
	for _, n := range st.Network {
		resp.NetworkStats = append(resp.NetworkStats, &pb.NetworkStats{
			Name: n.Name, RxBytes: n.RxBytes, RxPackets: n.RxPackets, RxErrors: n.RxErrs, RxDropped: n.RxDrop,
			TxBytes: n.TxBytes, TxPackets: n.TxPackets, TxErrors: n.TxErrs, TxDropped: n.TxDrop,
		})
	}
	return resp
}

func (v *Service) GetOOMEvent(ctx context.Context, _ *pb.GetOOMEventRequest) (*pb.OOMEvent, error) {
	id, err := v.s.NextOOM(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.OOMEvent{ContainerId: id}, nil
}

func (v *Service) GetMetrics(ctx context.Context, _ *pb.GetMetricsRequest) (*pb.Metrics, error) {
	text, err := v.s.Metrics(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &pb.Metrics{Metrics: text}, nil
}
