package kata

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
)

// cgroupHarness is a sandbox whose containers' cgroups are directories of
// plain files standing in for cgroup v2's, served with every call counted
// as the agent serves it. The containers are records only: these tests
// are about what the calls read and write (the real cgroups are in
// integration/kata_stats_test.go, in a VM).
type cgroupHarness struct {
	t    *testing.T
	s    *Sandbox
	c    pb.AgentServiceClient
	root string // the stand-in cgroup2 mount
}

func newCgroupHarness(t *testing.T) *cgroupHarness {
	t.Helper()
	h := &cgroupHarness{t: t, root: t.TempDir()}
	h.s = New(Config{Log: testLog(), Runtime: "/nonexistent", Bundles: t.TempDir(), Reaper: startReaper(t)})
	sys := t.TempDir()
	for p, content := range map[string]string{
		"devices/system/cpu/online": "0-1\n", "devices/system/node/online": "0\n",
		"kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": "0\n",
	} {
		writeFile(t, filepath.Join(sys, p), content)
	}
	h.s.cg.mount, h.s.cg.host = h.root, cgroup.Host{Sysfs: sys}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	svc := NewService(h.s)
	pb.RegisterAgentServiceServer(svc.CountCalls(srv), svc)
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
		if w := h.s.cg.oom.watcher.Load(); w != nil {
			w.Close()
		}
	})
	h.c = pb.NewAgentServiceClient(conn)
	return h
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// container records a running container id with a cgroup of files, as
// Create does once the runtime has made it.
func (h *cgroupHarness) container(id string) string {
	h.t.Helper()
	dir := filepath.Join(h.root, "cabin/containers", id)
	for name, content := range map[string]string{
		"cgroup.procs": "", "cgroup.controllers": "cpuset cpu io memory hugetlb pids",
		"memory.max": "max\n", "memory.low": "0\n", "memory.current": "8388608\n", "memory.peak": "9437184\n",
		"memory.stat":   "anon 4194304\nfile 4194304\nkernel 131072\n",
		"memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
		"cpu.weight":    "100\n", "cpu.max": "max 100000\n", "cpu.stat": "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n",
		"pids.max": "max\n", "pids.current": "1\n", "cpuset.cpus": "\n", "hugetlb.2MB.max": "max\n",
	} {
		writeFile(h.t, filepath.Join(dir, name), content)
	}
	c := &container{id: id, state: running, procs: map[string]*process{}}
	h.s.mu.Lock()
	h.s.containers[id] = c
	h.s.mu.Unlock()
	h.s.cgroupCreated(id, &specs.Spec{Linux: &specs.Linux{CgroupsPath: "/cabin/containers/" + id}})
	return dir
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot is every file of dir, to tell that a refused call changed none.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.Name() + "=" + readFile(t, filepath.Join(dir, e.Name())) + ";")
	}
	return b.String()
}

func TestUpdateContainer(t *testing.T) {
	h := newCgroupHarness(t)
	dir := h.container("c1")
	ctx := t.Context()
	// The runtime writes the cgroup and its state (the real one does in
	// TestRootUpdateState); this stand-in keeps what it was asked.
	asked := filepath.Join(t.TempDir(), "asked")
	h.s.rt.path = standIn(t, "#!/bin/sh\nshift 2\necho \"$@\" > "+asked+".args\ncat \"$3\" > "+asked+"\n")
	h.s.containers["c1"].bundle = t.TempDir()
	_, err := h.c.UpdateContainer(ctx, &pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{
		Memory: &pb.LinuxMemory{Limit: 64 << 20},
		CPU:    &pb.LinuxCPU{Shares: 512, Quota: 50000, Cpus: "1"},
		Pids:   &pb.LinuxPids{Limit: 20},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Only what was set, in OCI's terms, for the runtime to merge.
	if got, want := readFile(t, asked), `{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":50000,"cpus":"1"},"pids":{"limit":20}}`; strings.TrimSpace(got) != want {
		t.Errorf("resources for the runtime: %s, want %s", got, want)
	}
	if got := readFile(t, asked+".args"); !strings.HasPrefix(got, "update --resources ") || !strings.HasSuffix(got, " c1\n") {
		t.Errorf("runtime's arguments: %q", got)
	}
	os.Remove(asked)

	before := snapshot(t, dir)
	for _, tc := range []struct {
		req  *pb.UpdateContainerRequest
		code codes.Code
		msg  string
	}{
		{&pb.UpdateContainerRequest{ContainerId: "c1"}, codes.InvalidArgument, "resources: "},
		// Valid values first: nothing is written before all is checked.
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 5}, Memory: &pb.LinuxMemory{Limit: -7}}}, codes.InvalidArgument, "resources.Memory.Limit: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Memory: &pb.LinuxMemory{Limit: 1 << 20}}}, codes.InvalidArgument, "resources.Memory.Limit: "},
		// A reservation above the limit (which, above the 4 MiB of anonymous
		// memory that cannot be reclaimed, is fine).
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Memory: &pb.LinuxMemory{Limit: 7 << 20, Reservation: 8 << 20}}}, codes.InvalidArgument, "resources.Memory.Reservation: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 0 - 3}}}, codes.InvalidArgument, "resources.Pids.Limit: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{CPU: &pb.LinuxCPU{Cpus: "0-7"}}}, codes.InvalidArgument, "resources.CPU.Cpus: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{CPU: &pb.LinuxCPU{Quota: 5}}}, codes.InvalidArgument, "resources.CPU.Quota: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Devices: []*pb.LinuxDeviceCgroup{{Allow: true}}}}, codes.InvalidArgument, "resources.Devices: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{HugepageLimits: []*pb.LinuxHugepageLimit{{Pagesize: "3MB", Limit: 1}}}}, codes.InvalidArgument, "resources.HugepageLimits[0].Pagesize: "},
		{&pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{BlockIO: &pb.LinuxBlockIO{Weight: 100}}}, codes.FailedPrecondition, "resources.BlockIO.Weight: "},
		{&pb.UpdateContainerRequest{ContainerId: "nope", Resources: &pb.LinuxResources{}}, codes.NotFound, ""},
		{&pb.UpdateContainerRequest{ContainerId: "../c1", Resources: &pb.LinuxResources{}}, codes.InvalidArgument, "container_id: "},
	} {
		_, err := h.c.UpdateContainer(ctx, tc.req)
		wantCode(t, tc.msg, err, tc.code, tc.msg)
	}
	if after := snapshot(t, dir); after != before {
		t.Errorf("refused updates changed the cgroup:\n%s\n%s", before, after)
	}
	if _, err := os.Stat(asked); !os.IsNotExist(err) {
		t.Errorf("a refused update reached the runtime: %v", err)
	}

	// A container being removed takes no update.
	h.s.mu.Lock()
	h.s.containers["c1"].removing = true
	h.s.mu.Unlock()
	_, err = h.c.UpdateContainer(ctx, &pb.UpdateContainerRequest{ContainerId: "c1", Resources: &pb.LinuxResources{Pids: &pb.LinuxPids{Limit: 9}}})
	wantCode(t, "while removing", err, codes.FailedPrecondition, "")
}

func TestStatsContainer(t *testing.T) {
	h := newCgroupHarness(t)
	dir := h.container("c1")
	ctx := t.Context()
	st, err := h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	cs := st.GetCgroupStats()
	if u := cs.GetCpuStats().GetCpuUsage(); u.GetTotalUsage() != 1000000 || u.GetUsageInUsermode() != 600000 || u.GetUsageInKernelmode() != 400000 || len(u.GetPercpuUsage()) != 0 {
		t.Errorf("cpu %v", u)
	}
	m := cs.GetMemoryStats()
	if m.GetUsage().GetUsage() != 8<<20 || m.GetUsage().GetMaxUsage() != 9<<20 || m.GetCache() != 4<<20 || m.GetStats()["anon"] != 4<<20 || !m.GetUseHierarchy() || m.GetKernelUsage().GetUsage() != 131072 {
		t.Errorf("memory %v", m)
	}
	if p := cs.GetPidsStats(); p.GetCurrent() != 1 || p.GetLimit() != 0 {
		t.Errorf("pids %v", p)
	}
	// Numbers move with the cgroup's.
	writeFile(t, filepath.Join(dir, "memory.current"), "33554432\n")
	writeFile(t, filepath.Join(dir, "io.stat"), "254:0 rbytes=512 wbytes=1024 rios=1 wios=2\n")
	st, err = h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.GetCgroupStats().GetMemoryStats().GetUsage().GetUsage(); got != 32<<20 {
		t.Errorf("usage %d after it grew", got)
	}
	b := st.GetCgroupStats().GetBlkioStats()
	if len(b.GetIoServiceBytesRecursive()) != 2 || b.GetIoServiceBytesRecursive()[1].GetOp() != "Write" || b.GetIoServicedRecursive()[0].GetValue() != 1 {
		t.Errorf("blkio %v", b)
	}

	_, err = h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "nope"})
	wantCode(t, "unknown", err, codes.NotFound, "")
	_, err = h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "a/b"})
	wantCode(t, "bad id", err, codes.InvalidArgument, "container_id: ")
	// A cgroup v1 directory (no cgroup.controllers) is named as such.
	os.Remove(filepath.Join(dir, "cgroup.controllers"))
	_, err = h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "c1"})
	wantCode(t, "v1", err, codes.FailedPrecondition, "")
}

// TestGetOOMEvent: one queue, as Kata's agent has: each kill is taken by
// one call, in order; a call that gives up takes none.
func TestGetOOMEvent(t *testing.T) {
	h := newCgroupHarness(t)
	a, b := h.container("a"), h.container("b")
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := h.c.GetOOMEvent(short, &pb.GetOOMEventRequest{})
	wantCode(t, "nothing killed", err, codes.DeadlineExceeded, "")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	got := make(chan string, 1)
	go func() {
		ev, err := h.c.GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
		if err != nil {
			t.Error(err)
		}
		got <- ev.GetContainerId()
	}()
	writeFile(t, filepath.Join(b, "memory.events"), "max 3\noom 1\noom_kill 1\n")
	if id := <-got; id != "b" {
		t.Errorf("OOM event for %q, want b", id)
	}
	// Two kills before anyone asks: both are kept.
	writeFile(t, filepath.Join(a, "memory.events"), "max 3\noom 1\noom_kill 1\n")
	waitQueued(t, h.s, 1)
	writeFile(t, filepath.Join(b, "memory.events"), "max 3\noom 2\noom_kill 2\n")
	waitQueued(t, h.s, 2)
	for _, want := range []string{"a", "b"} {
		ev, err := h.c.GetOOMEvent(ctx, &pb.GetOOMEventRequest{})
		if err != nil || ev.GetContainerId() != want {
			t.Errorf("GetOOMEvent: %v, %v; want %s", ev, err, want)
		}
	}
	// Removed, a container's kills are no longer watched.
	h.s.cgroupRemoved("a")
	writeFile(t, filepath.Join(a, "memory.events"), "max 3\noom 2\noom_kill 2\n")
	writeFile(t, filepath.Join(b, "memory.events"), "max 3\noom 3\noom_kill 3\n")
	if ev, err := h.c.GetOOMEvent(ctx, &pb.GetOOMEventRequest{}); err != nil || ev.GetContainerId() != "b" {
		t.Errorf("GetOOMEvent after a's removal: %v, %v", ev, err)
	}
}

// waitQueued waits until n OOM events are queued.
func waitQueued(t *testing.T, s *Sandbox, n int) {
	t.Helper()
	for range 10000 {
		s.cg.oom.mu.Lock()
		l := len(s.cg.oom.queue)
		s.cg.oom.mu.Unlock()
		if l >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%d OOM events never queued", n)
}

// TestGetMetrics parses the exposition back with Prometheus's own parser
// and checks it against this machine's procfs and the calls made.
func TestGetMetrics(t *testing.T) {
	h := newCgroupHarness(t)
	ctx := t.Context()
	if _, err := h.c.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "nope"}); err == nil {
		t.Fatal("stats of nothing")
	}
	if _, err := h.c.GetMetrics(ctx, &pb.GetMetricsRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.c.GetMetrics(ctx, &pb.GetMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fams := parseMetrics(t, resp.GetMetrics())
	meminfo := readFile(t, "/proc/meminfo")
	var totalKB float64
	for line := range strings.SplitSeq(meminfo, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "MemTotal:" {
			totalKB, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	if got := sample(t, fams, "kata_guest_meminfo", "item", "mem_total"); got != totalKB*1024 {
		t.Errorf("mem_total %v, want %v from /proc/meminfo", got, totalKB*1024)
	}
	if got := sample(t, fams, "kata_agent_scrape_count"); got != 2 {
		t.Errorf("scrape_count %v, want 2", got)
	}
	if got := sample(t, fams, "kata_agent_calls_total", "method", "/grpc.AgentService/StatsContainer", "code", "NotFound"); got != 1 {
		t.Errorf("StatsContainer NotFound calls %v, want 1", got)
	}
	if got := sample(t, fams, "kata_agent_calls_total", "method", "/grpc.AgentService/GetMetrics", "code", "OK"); got != 1 {
		t.Errorf("GetMetrics calls %v, want 1 (the one before)", got)
	}
	if got := sample(t, fams, "kata_agent_total_rss"); got <= 0 {
		t.Errorf("rss %v", got)
	}
	if got := sample(t, fams, "kata_guest_cpu_time", "cpu", "total", "item", "user"); got <= 0 {
		t.Errorf("cpu user time %v", got)
	}
	for _, name := range []string{"kata_guest_load", "kata_guest_netdev_stat", "kata_guest_vm_stat", "kata_guest_tasks", "kata_agent_threads"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

func parseMetrics(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader([]byte(text)))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, text)
	}
	return fams
}

// sample is the value of name's sample with the labels given (name,
// value pairs).
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	for _, m := range fams[name].GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			match = match && found
		}
		if match {
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no sample %s%v", name, labels)
	return 0
}

func TestParseNetDev(t *testing.T) {
	in := "Inter-|   Receive                                                |  Transmit\n" +
		" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n" +
		"    lo:    1234      12    0    0    0     0          0         0     1234      12    0    0    0     0       0          0\n" +
		"  eth0: 5000 50 1 2 0 0 0 0 6000 60 3 4 0 0 0 0\n" +
		"  bad: 1 2 3\n"
	got := ParseNetDev([]byte(in))
	want := []NetDev{{Name: "lo", RxBytes: 1234, RxPackets: 12, TxBytes: 1234, TxPackets: 12},
		{Name: "eth0", RxBytes: 5000, RxPackets: 50, RxErrs: 1, RxDrop: 2, TxBytes: 6000, TxPackets: 60, TxErrs: 3, TxDrop: 4}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ParseNetDev = %+v\nwant %+v", got, want)
	}
	if b, err := os.ReadFile("/proc/self/net/dev"); err == nil && len(ParseNetDev(b)) == 0 {
		t.Errorf("this process's /proc/self/net/dev parses to nothing:\n%s", b)
	}
}

func FuzzParseNetDev(f *testing.F) {
	f.Add([]byte("  eth0: 5000 50 1 2 0 0 0 0 6000 60 3 4 0 0 0 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, d := range ParseNetDev(b) {
			if d.Name == "" {
				t.Fatal("interface without a name")
			}
		}
	})
}
