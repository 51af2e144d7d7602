package integration

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/kata"
)

// TestKataStats drives the cgroup calls of AgentService through cabind's
// relay, with only the seed protocol's types, on the shared VM's real
// cgroups: StatsContainer, UpdateContainer (and its refusals), an OOM
// kill seen by GetOOMEvent and WaitProcess, and GetMetrics parsed by
// Prometheus's parser.
func TestKataStats(t *testing.T) {
	e := needEnv(t)
	vm := e.shared.name
	ctx := toVM(testContext(t, 3*time.Minute), vm)
	agent := kata.NewAgentServiceClient(e.cc)

	create := func(t *testing.T, id string, args ...string) {
		t.Helper()
		spec := kataSpec(args...)
		// A /tmp in memory, charged to the container.
		spec.Mounts = append(spec.Mounts, &kata.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "size=64m"}})
		if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: []*kata.Storage{kataRootfs()}, OCI: spec}); err != nil {
			t.Fatalf("CreateContainer %s: %v", id, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			agent.RemoveContainer(toVM(ctx, vm), &kata.RemoveContainerRequest{ContainerId: id})
		})
		if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer %s: %v", id, err)
		}
	}
	stats := func(t *testing.T, id string) *kata.StatsContainerResponse {
		t.Helper()
		st, err := agent.StatsContainer(ctx, &kata.StatsContainerRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("StatsContainer %s: %v", id, err)
		}
		return st
	}
	run := func(t *testing.T, id, eid string, args ...string) string {
		t.Helper()
		if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: &kata.Process{
			Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
		}}); err != nil {
			t.Fatalf("ExecProcess %v: %v", args, err)
		}
		out := readAll(t, agent, ctx, id, eid)
		if w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: eid}); err != nil || w.GetStatus() != 0 {
			t.Fatalf("%v: %v, %v: %s", args, w, err, out)
		}
		return out
	}

	const id = "it-stats"
	create(t, id, "sleep", "1000")

	t.Run("stats", func(t *testing.T) {
		st := stats(t, id)
		cs := st.GetCgroupStats()
		mem := cs.GetMemoryStats()
		if cs.GetCpuStats().GetCpuUsage().GetTotalUsage() == 0 || mem.GetUsage().GetUsage() == 0 || cs.GetPidsStats().GetCurrent() == 0 {
			t.Errorf("a running container's stats: %v", cs)
		}
		// The agent's bounds: every container gets the containers' limit.
		if l := mem.GetUsage().GetLimit(); l == 0 || l >= 1<<40 {
			t.Errorf("memory limit %d; want the containers' bound", l)
		}
		if _, ok := mem.GetStats()["anon"]; !ok || !mem.GetUseHierarchy() {
			t.Errorf("memory.stat not passed on: %v", mem)
		}
		// No network namespace of its own: the VM's interfaces.
		var names []string
		for _, n := range st.GetNetworkStats() {
			names = append(names, n.GetName())
		}
		if !strings.Contains(strings.Join(names, " "), "lo") {
			t.Errorf("network stats %v; want the VM's lo", names)
		}

		// 24 MiB written to its tmpfs are its memory, and stay so.
		before := mem.GetUsage().GetUsage()
		run(t, id, "fill", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=24")
		after := stats(t, id).GetCgroupStats().GetMemoryStats()
		if after.GetUsage().GetUsage() < before+20<<20 || after.GetStats()["shmem"] < 24<<20 {
			t.Errorf("usage %d → %d, shmem %d after filling 24 MiB of tmpfs", before, after.GetUsage().GetUsage(), after.GetStats()["shmem"])
		}
	})

	t.Run("update", func(t *testing.T) {
		limit := stats(t, id).GetCgroupStats().GetMemoryStats().GetUsage().GetLimit()
		for _, tc := range []struct {
			r     *kata.LinuxResources
			field string
		}{
			{&kata.LinuxResources{Memory: &kata.LinuxMemory{Limit: -5}}, "resources.Memory.Limit"},
			// The 24 MiB in its tmpfs cannot be reclaimed (no swap).
			{&kata.LinuxResources{Memory: &kata.LinuxMemory{Limit: 16 << 20}}, "resources.Memory.Limit"},
			{&kata.LinuxResources{Pids: &kata.LinuxPids{Limit: -3}, Memory: &kata.LinuxMemory{Limit: 100 << 20}}, "resources.Pids.Limit"},
			{&kata.LinuxResources{CPU: &kata.LinuxCPU{Cpus: "0-63"}}, "resources.CPU.Cpus"},
			{&kata.LinuxResources{CPU: &kata.LinuxCPU{Quota: 1}}, "resources.CPU.Quota"},
			{&kata.LinuxResources{BlockIO: &kata.LinuxBlockIO{Weight: 5000}}, "resources.BlockIO.Weight"},
		} {
			_, err := agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: id, Resources: tc.r})
			wantCode(t, err, codes.InvalidArgument, tc.field)
		}
		if l := stats(t, id).GetCgroupStats().GetMemoryStats().GetUsage().GetLimit(); l != limit {
			t.Errorf("refused updates changed the memory limit %d → %d", limit, l)
		}
		_, err := agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: id, Resources: &kata.LinuxResources{
			Memory: &kata.LinuxMemory{Limit: 48 << 20},
			Pids:   &kata.LinuxPids{Limit: 50},
			CPU:    &kata.LinuxCPU{Shares: 512, Quota: 50000, Period: 100000, Cpus: "0"},
		}})
		if err != nil {
			t.Fatalf("UpdateContainer: %v", err)
		}
		cs := stats(t, id).GetCgroupStats()
		if cs.GetMemoryStats().GetUsage().GetLimit() != 48<<20 || cs.GetPidsStats().GetLimit() != 50 {
			t.Errorf("after the update: memory limit %d, pids limit %d", cs.GetMemoryStats().GetUsage().GetLimit(), cs.GetPidsStats().GetLimit())
		}
		// What the guest's cgroup says.
		out := mustExec(t, e, vm, "cat", "/sys/fs/cgroup/cabin/containers/"+id+"/cpu.max", "/sys/fs/cgroup/cabin/containers/"+id+"/cpu.weight", "/sys/fs/cgroup/cabin/containers/"+id+"/cpuset.cpus")
		if out != "50000 100000\n59\n0\n" {
			t.Errorf("cpu.max, cpu.weight and cpuset.cpus: %q", out)
		}
		_, err = agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: "it-nothing", Resources: &kata.LinuxResources{}})
		wantCode(t, err, codes.NotFound)
	})

	t.Run("oom", func(t *testing.T) {
		const victim = "it-oom"
		// Its init waits for a line, then becomes a dd whose 64 MiB
		// buffer is past the limit set below.
		create(t, victim, "sh", "-c", "read x; exec dd if=/dev/zero of=/dev/null bs=64M count=1")
		if _, err := agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: victim,
			Resources: &kata.LinuxResources{Memory: &kata.LinuxMemory{Limit: 32 << 20}}}); err != nil {
			t.Fatalf("UpdateContainer: %v", err)
		}
		// A caller that gives up takes no event.
		quick, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := agent.GetOOMEvent(quick, &kata.GetOOMEventRequest{})
		cancel()
		if c := codeOf(err); c != codes.DeadlineExceeded && c != codes.Canceled {
			t.Errorf("GetOOMEvent with nothing killed: %v", err)
		}
		events := make(chan *kata.OOMEvent, 1)
		go func() {
			ev, err := agent.GetOOMEvent(ctx, &kata.GetOOMEventRequest{})
			if err != nil {
				t.Errorf("GetOOMEvent: %v", err)
			}
			events <- ev
		}()
		if _, err := agent.WriteStdin(ctx, &kata.WriteStreamRequest{ContainerId: victim, Data: []byte("go\n")}); err != nil {
			t.Fatalf("WriteStdin: %v", err)
		}
		if ev := <-events; ev.GetContainerId() != victim {
			t.Errorf("OOM event %v; want %s", ev, victim)
		}
		// Killed by SIGKILL: Kata's status 9, and cabin's trailer, which
		// a shell would make 137.
		var trailer metadata.MD
		w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: victim}, grpc.Trailer(&trailer))
		if sig := trailer.Get(kata.ExitSignalTrailer); err != nil || w.GetStatus() != 9 || len(sig) != 1 || sig[0] != "9" {
			t.Errorf("WaitProcess after the OOM kill: %v, %v, trailer %v; want 9 (128+9 = 137)", w, err, trailer)
		}
		// The sandbox goes on serving: the other container's stats.
		if st := stats(t, id); st.GetCgroupStats().GetPidsStats().GetCurrent() == 0 {
			t.Errorf("the other container after the OOM kill: %v", st.GetCgroupStats().GetPidsStats())
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := agent.GetMetrics(ctx, &kata.GetMetricsRequest{})
		if err != nil {
			t.Fatalf("GetMetrics: %v", err)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(bytes.NewReader([]byte(resp.GetMetrics())))
		if err != nil {
			t.Fatalf("the exposition does not parse: %v\n%s", err, resp.GetMetrics())
		}
		// The guest's MemTotal, as its /proc/meminfo says.
		var totalKB float64
		for line := range strings.SplitSeq(mustExec(t, e, vm, "cat", "/proc/meminfo"), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "MemTotal:" {
				totalKB, _ = strconv.ParseFloat(f[1], 64)
			}
		}
		if got := metricValue(fams, "kata_guest_meminfo", "item", "mem_total"); got != totalKB*1024 || got == 0 {
			t.Errorf("kata_guest_meminfo mem_total %v; the guest's MemTotal is %v kB", got, totalKB)
		}
		if got := metricValue(fams, "kata_agent_calls_total", "method", "/grpc.AgentService/StatsContainer", "code", "OK"); got < 4 {
			t.Errorf("StatsContainer calls counted: %v", got)
		}
		if got := metricValue(fams, "kata_agent_calls_total", "method", "/grpc.AgentService/UpdateContainer", "code", "InvalidArgument"); got < 6 {
			t.Errorf("refused UpdateContainer calls counted: %v", got)
		}
		if got := metricValue(fams, "kata_agent_total_rss"); got <= 0 {
			t.Errorf("agent rss %v", got)
		}
		if got := metricValue(fams, "kata_guest_vm_stat", "item", "oom_kill"); got < 1 {
			t.Errorf("vm_stat oom_kill %v after an OOM kill", got)
		}
	})
}

// TestKataOOMEventVMKilled: a GetOOMEvent waiting in a VM whose QEMU is
// SIGKILLed ends with an error rather than hanging.
func TestKataOOMEventVMKilled(t *testing.T) {
	e := needEnv(t)
	const name = "it-oom-killed"
	ref := bootOwnVM(t, e, name)
	ctx := toVM(testContext(t, 2*time.Minute), name)
	agent := kata.NewAgentServiceClient(e.cc)
	// The call is in the guest: the relay reached it once before.
	if _, err := agent.GetMetrics(ctx, &kata.GetMetricsRequest{}); err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := agent.GetOOMEvent(ctx, &kata.GetOOMEventRequest{})
		done <- err
	}()
	// Let the call reach the agent, then kill the VM under it.
	time.Sleep(500 * time.Millisecond)
	if err := syscall.Kill(ref.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || codeOf(err) == codes.DeadlineExceeded {
			t.Errorf("GetOOMEvent after its VM was killed: %v; want an error before the deadline", err)
		}
	case <-ctx.Done():
		t.Fatal("GetOOMEvent still waits after its VM was killed")
	}
}

func codeOf(err error) codes.Code { return status.Code(err) }

// metricValue is the value of name's sample with the labels given (name,
// value pairs), or -1 if there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
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
	return -1
}
