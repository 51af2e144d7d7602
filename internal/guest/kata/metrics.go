package kata

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/blockdevice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// The metric namespaces, Kata's agent's: its shim and kata-monitor pass
// the text on as it is.
const (
	agentNamespace = "kata_agent"
	guestNamespace = "kata_guest"
)

// metrics is GetMetrics': the calls counted since the agent started,
// and the families built afresh from procfs on each GetMetrics. The agent
// is PID 1 of a VM that must boot fast, so nothing of it runs before
// someone asks: client_golang is not used, since importing its package
// registers the Go and process collectors of its default registry at
// start-up (docs/decisions.md §25); the families are Prometheus's own
// client_model messages, written by its expfmt encoder.
type metrics struct {
	// calls counts calls by method and code; see CountCalls.
	calls   sync.Map // callKey → *atomic.Uint64
	scrapes atomic.Uint64
	// procfs and sysfs are the guest's; empty means /proc and /sys.
	// Tests set them.
	procfs, sysfs string
}

type callKey struct{ method, code string }

func (m *metrics) count(method string, err error) {
	k := callKey{method, status.Code(err).String()}
	n, ok := m.calls.Load(k)
	if !ok {
		n, _ = m.calls.LoadOrStore(k, new(atomic.Uint64))
	}
	n.(*atomic.Uint64).Add(1)
}

// CountCalls returns a registrar that registers services on r with each
// of their calls counted, by method and status code, for GetMetrics
// (kata_agent_calls_total). It wraps the methods' handlers, so it counts
// the calls of every transport the registrar serves.
func (v *Service) CountCalls(r grpc.ServiceRegistrar) grpc.ServiceRegistrar {
	return countingRegistrar{r: r, m: &v.s.metrics}
}

type countingRegistrar struct {
	r grpc.ServiceRegistrar
	m *metrics
}

func (c countingRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, md := range desc.Methods {
		name, h := "/"+desc.ServiceName+"/"+md.MethodName, md.Handler
		md.Handler = func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			resp, err := h(srv, ctx, dec, in)
			c.m.count(name, err)
			return resp, err
		}
		d.Methods[i] = md
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		name, h := "/"+desc.ServiceName+"/"+sd.StreamName, sd.Handler
		sd.Handler = func(srv any, stream grpc.ServerStream) error {
			err := h(srv, stream)
			c.m.count(name, err)
			return err
		}
		d.Streams[i] = sd
	}
	c.r.RegisterService(&d, impl)
}

// Metrics is the Prometheus text exposition of the guest (load, tasks,
// CPU, memory, virtual memory, network and disks, from procfs) and of the
// agent (its process, Go runtime, scrapes and calls). A source that
// cannot be read is left out, and logged.
func (s *Sandbox) Metrics(ctx context.Context) (string, error) {
	m := &s.metrics
	procRoot, sysRoot := cmp.Or(m.procfs, procfs.DefaultMountPoint), cmp.Or(m.sysfs, "/sys")
	f := families{}
	f.counter(agentNamespace+"_scrape_count", "GetMetrics calls.", float64(m.scrapes.Add(1)))
	m.calls.Range(func(k, v any) bool {
		key := k.(callKey)
		f.counter(agentNamespace+"_calls_total", "Calls the agent served, by method and status code.",
			float64(v.(*atomic.Uint64).Load()), "method", key.method, "code", key.code)
		return true
	})
	fs, err := procfs.NewFS(procRoot)
	if err != nil {
		return "", fmt.Errorf("metrics: %w", err)
	}
	for _, err := range []error{agentMetrics(f, fs), guestMetrics(f, fs, procRoot, sysRoot)} {
		if err != nil {
			s.log.Warn("metrics: partly gathered", "err", err)
		}
	}
	return f.text()
}

// families are metric families by name, built up a sample at a time.
type families map[string]*dto.MetricFamily

func (f families) add(typ dto.MetricType, name, help string, v float64, labels ...string) {
	mf := f[name]
	if mf == nil {
		mf = &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: typ.Enum()}
		f[name] = mf
	}
	m := &dto.Metric{}
	for i := 0; i+1 < len(labels); i += 2 {
		m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(labels[i]), Value: proto.String(labels[i+1])})
	}
	if typ == dto.MetricType_COUNTER {
		m.Counter = &dto.Counter{Value: proto.Float64(v)}
	} else {
		m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
	}
	mf.Metric = append(mf.Metric, m)
}

func (f families) gauge(name, help string, v float64, labels ...string) {
	f.add(dto.MetricType_GAUGE, name, help, v, labels...)
}

func (f families) counter(name, help string, v float64, labels ...string) {
	f.add(dto.MetricType_COUNTER, name, help, v, labels...)
}

// text writes the families in the text format, sorted by name and labels
// so that one scrape reads like the next.
func (f families) text() (string, error) {
	names := make([]string, 0, len(f))
	for n := range f {
		names = append(names, n)
	}
	slices.Sort(names)
	var b bytes.Buffer
	b.Grow(32 << 10) // a guest's exposition is some 18 KiB
	type keyed struct {
		key string
		m   *dto.Metric
	}
	var ms []keyed
	for _, n := range names {
		mf := f[n]
		ms = ms[:0]
		for _, m := range mf.Metric {
			ms = append(ms, keyed{labelKey(m), m})
		}
		slices.SortFunc(ms, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
		for i, k := range ms {
			mf.Metric[i] = k.m
		}
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return "", fmt.Errorf("metrics: %w", err)
		}
	}
	return b.String(), nil
}

func labelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.GetLabel() {
		b.WriteString(l.GetValue())
		b.WriteByte(0)
	}
	return b.String()
}

// agentMetrics are the agent's process (Kata's names) and Go runtime.
func agentMetrics(f families, fs procfs.FS) error {
	f.gauge(agentNamespace+"_go_goroutines", "Goroutines of the agent.", float64(goruntime.NumGoroutine()))
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	f.gauge(agentNamespace+"_go_heap_alloc_bytes", "Heap bytes the agent has allocated and not freed.", float64(ms.HeapAlloc))
	f.gauge(agentNamespace+"_go_sys_bytes", "Bytes the agent's Go runtime got from the kernel.", float64(ms.Sys))
	f.counter(agentNamespace+"_go_gc_cycles_total", "Garbage collections of the agent.", float64(ms.NumGC))
	p, err := fs.Self()
	if err != nil {
		return err
	}
	st, err := p.Stat()
	if err != nil {
		return err
	}
	f.gauge(agentNamespace+"_total_time", "Agent process CPU time, user and system, in seconds.", st.CPUTime())
	f.gauge(agentNamespace+"_total_rss", "Agent process resident set in bytes.", float64(st.ResidentMemory()))
	f.gauge(agentNamespace+"_total_vm", "Agent process virtual memory in bytes.", float64(st.VirtualMemory()))
	f.gauge(agentNamespace+"_threads", "Agent process threads.", float64(st.NumThreads))
	if n, err := p.FileDescriptorsLen(); err == nil {
		f.gauge(agentNamespace+"_open_fds", "Agent process open file descriptors.", float64(n))
	}
	return nil
}

// guestMetrics are the guest's, Kata's names and units (CPU time in
// milliseconds, memory in bytes).
func guestMetrics(f families, fs procfs.FS, procRoot, sysRoot string) error {
	var errs []error
	if l, err := fs.LoadAvg(); err == nil {
		const help = "Guest load averages."
		f.gauge(guestNamespace+"_load", help, l.Load1, "item", "load1")
		f.gauge(guestNamespace+"_load", help, l.Load5, "item", "load5")
		f.gauge(guestNamespace+"_load", help, l.Load15, "item", "load15")
	} else {
		errs = append(errs, err)
	}
	if st, err := fs.Stat(); err == nil {
		const help = "Guest tasks running and blocked."
		f.gauge(guestNamespace+"_tasks", help, float64(st.ProcessesRunning), "item", "running")
		f.gauge(guestNamespace+"_tasks", help, float64(st.ProcessesBlocked), "item", "blocked")
		cpuTimes(f, "total", st.CPUTotal)
		for n, c := range st.CPU {
			cpuTimes(f, strconv.FormatInt(n, 10), c)
		}
	} else {
		errs = append(errs, err)
	}
	if mi, err := fs.Meminfo(); err == nil {
		for item, v := range map[string]*uint64{
			"mem_total": mi.MemTotalBytes, "mem_free": mi.MemFreeBytes, "mem_available": mi.MemAvailableBytes,
			"buffers": mi.BuffersBytes, "cached": mi.CachedBytes, "swap_cached": mi.SwapCachedBytes,
			"active": mi.ActiveBytes, "inactive": mi.InactiveBytes, "active_anon": mi.ActiveAnonBytes,
			"inactive_anon": mi.InactiveAnonBytes, "active_file": mi.ActiveFileBytes, "inactive_file": mi.InactiveFileBytes,
			"unevictable": mi.UnevictableBytes, "mlocked": mi.MlockedBytes, "swap_total": mi.SwapTotalBytes,
			"swap_free": mi.SwapFreeBytes, "dirty": mi.DirtyBytes, "writeback": mi.WritebackBytes,
			"anon_pages": mi.AnonPagesBytes, "mapped": mi.MappedBytes, "shmem": mi.ShmemBytes,
			"slab": mi.SlabBytes, "s_reclaimable": mi.SReclaimableBytes, "s_unreclaim": mi.SUnreclaimBytes,
			"kernel_stack": mi.KernelStackBytes, "page_tables": mi.PageTablesBytes, "commit_limit": mi.CommitLimitBytes,
			"committed_as": mi.CommittedASBytes, "anon_hugepages": mi.AnonHugePagesBytes, "hugetlb": mi.HugetlbBytes,
		} {
			if v != nil {
				f.gauge(guestNamespace+"_meminfo", "Guest memory from /proc/meminfo, in bytes.", float64(*v), "item", item)
			}
		}
	} else {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(procRoot + "/vmstat"); err == nil {
		for k, v := range cgroup.ParseFlatKeyed(b) {
			f.gauge(guestNamespace+"_vm_stat", "Guest virtual memory statistics from /proc/vmstat.", float64(v), "item", k)
		}
	} else {
		errs = append(errs, err)
	}
	if nd, err := fs.NetDev(); err == nil {
		for _, d := range nd {
			for item, v := range map[string]uint64{
				"recv_bytes": d.RxBytes, "recv_packets": d.RxPackets, "recv_errs": d.RxErrors, "recv_drop": d.RxDropped,
				"sent_bytes": d.TxBytes, "sent_packets": d.TxPackets, "sent_errs": d.TxErrors, "sent_drop": d.TxDropped,
			} {
				f.gauge(guestNamespace+"_netdev_stat", "Guest network interface counters.", float64(v), "interface", d.Name, "item", item)
			}
		}
	} else {
		errs = append(errs, err)
	}
	bfs, err := blockdevice.NewFS(procRoot, sysRoot)
	if err == nil {
		var ds []blockdevice.Diskstats
		if ds, err = bfs.ProcDiskstats(); err == nil {
			for _, d := range ds {
				for item, v := range map[string]uint64{
					"reads": d.ReadIOs, "merged": d.ReadMerges, "sectors_read": d.ReadSectors, "time_reading": d.ReadTicks,
					"writes": d.WriteIOs, "writes_merged": d.WriteMerges, "sectors_written": d.WriteSectors,
					"time_writing": d.WriteTicks, "in_progress": d.IOsInProgress, "time_in_progress": d.IOsTotalTicks,
				} {
					f.gauge(guestNamespace+"_diskstat", "Guest block device counters from /proc/diskstats.", float64(v), "disk", d.DeviceName, "item", item)
				}
			}
		}
	}
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cpuTimes reports one CPU's times (procfs gives seconds) in
// milliseconds, as Kata's agent does.
func cpuTimes(f families, cpu string, c procfs.CPUStat) {
	for item, v := range map[string]float64{
		"user": c.User, "nice": c.Nice, "system": c.System, "idle": c.Idle, "iowait": c.Iowait,
		"irq": c.IRQ, "softirq": c.SoftIRQ, "steal": c.Steal, "guest": c.Guest, "guest_nice": c.GuestNice,
	} {
		f.gauge(guestNamespace+"_cpu_time", "Guest CPU time in milliseconds, in total and per CPU.", v*1000, "cpu", cpu, "item", item)
	}
}
