package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

const (
	ctrRunning = containersv1.ContainerState_CONTAINER_STATE_RUNNING
	ctrStopped = containersv1.ContainerState_CONTAINER_STATE_STOPPED
	ctrCreated = containersv1.ContainerState_CONTAINER_STATE_CREATED
)

func TestPs(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	dev.add("web", ctrRunning)
	dev.add("done", ctrStopped).c.ExitCode = 3
	h.vm("other").add("db", ctrRunning)
	h.stopped = []string{"gone"}

	r := h.run(t, nil, "ps")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "CONTAINER ID") || !strings.Contains(r.stdout, "web") ||
		!strings.Contains(r.stdout, "db") || strings.Contains(r.stdout, "done") || !strings.Contains(r.stdout, "Up ") {
		t.Fatalf("ps: %+v", r)
	}
	r = h.run(t, nil, "ps", "-a", "-q")
	ids := strings.Fields(r.stdout)
	slices.Sort(ids)
	if r.code != 0 || !slices.Equal(ids, []string{"db", "done", "web"}) {
		t.Fatalf("ps -aq: %+v", r)
	}
	r = h.run(t, nil, "ps", "-a", "--vm", "dev", "--json")
	var cs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil || r.code != 0 {
		t.Fatalf("ps --json: %+v, %v", r, err)
	}
	for _, c := range cs {
		if c["vm"] != "dev" || c["id"] == "db" {
			t.Errorf("ps --vm dev --json: %v", c)
		}
		if c["id"] == "done" && (c["state"] != "CONTAINER_STATE_STOPPED" || c["exit_code"] != float64(3)) {
			t.Errorf("stopped container: %v", c)
		}
	}
	r = h.run(t, nil, "ps", "-a", "--format", "{{.Id}}@{{.Vm}}", "--vm", "other")
	if r.code != 0 || r.stdout != "db@other\n" {
		t.Errorf("ps --format: %+v", r)
	}

	// A VM whose agent does not answer is named; the others listed.
	h.mu.Lock()
	h.vms["other"].down = true
	h.mu.Unlock()
	r = h.run(t, nil, "ps")
	if r.code != 0 || !strings.Contains(r.stdout, "web") || !strings.Contains(r.stderr, "other") {
		t.Errorf("ps with a VM down: %+v", r)
	}
	for _, bad := range [][]string{{"ps", "--vm", "../x"}, {"ps", "extra"}, {"ps", "-q", "--json"}} {
		if r := h.run(t, nil, bad...); r.code != exitUsage {
			t.Errorf("%v: %+v, want a usage error", bad, r)
		}
	}
}

func TestContainerStatus(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-d)) }
	for _, c := range []struct {
		c    *containersv1.Container
		want string
	}{
		{&containersv1.Container{State: ctrRunning, Started: at(5 * time.Minute)}, "Up 5 minutes"},
		{&containersv1.Container{State: ctrRunning, Started: at(time.Second)}, "Up 1 second"},
		{&containersv1.Container{State: containersv1.ContainerState_CONTAINER_STATE_PAUSED, Started: at(3 * time.Hour)}, "Up 3 hours (Paused)"},
		{&containersv1.Container{State: ctrStopped, ExitCode: 137, Finished: at(72 * time.Hour)}, "Exited (137) 3 days ago"},
		{&containersv1.Container{State: ctrCreated}, "Created"},
	} {
		if got := containerStatus(c.c, now); got != c.want {
			t.Errorf("%v: %q, want %q", c.c, got, c.want)
		}
	}
}

func TestFindContainerAmbiguous(t *testing.T) {
	h := startHost(t)
	h.vm("a").add("web", ctrRunning)
	h.vm("b").add("web", ctrRunning)
	r := h.run(t, nil, "logs", "web")
	if r.code != exitUsage || !strings.Contains(r.stderr, "a, b") || !strings.Contains(r.stderr, "--vm") {
		t.Fatalf("logs of an id two VMs have: %+v", r)
	}
	r = h.run(t, nil, "logs", "nope")
	if r.code != exitFailure || !strings.Contains(r.stderr, `no container "nope"`) {
		t.Fatalf("logs of an unknown id: %+v", r)
	}
	r = h.run(t, nil, "logs", "--vm", "a", "nope")
	if r.code != exitFailure || !strings.Contains(r.stderr, "in VM a") {
		t.Fatalf("logs --vm of an unknown id: %+v", r)
	}
	if r := h.run(t, nil, "logs", "bad/id"); r.code != exitUsage {
		t.Fatalf("logs of a bad id: %+v", r)
	}
}

func TestExecIntoContainer(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	dev.add("web", ctrRunning)
	dev.add("idle", ctrStopped)
	r := h.run(t, nil, "exec", "-e", "A=b", "-u", "1000:50", "-w", "/tmp", "web", "echo", "hi", "there")
	if r.code != 0 || r.stdout != "hi there\n" {
		t.Fatalf("exec echo: %+v", r)
	}
	dev.mu.Lock()
	req := dev.execs[0]
	dev.mu.Unlock()
	p := req.GetProcess()
	if req.GetExecId() == "" || req.GetExecId() == "web" || p.GetCwd() != "/tmp" || p.GetUser().GetUID() != 1000 ||
		p.GetUser().GetGID() != 50 || !slices.Contains(p.GetEnv(), "A=b") || !slices.ContainsFunc(p.GetEnv(), func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		t.Errorf("ExecProcess: %v", req)
	}
	if r := h.run(t, nil, "exec", "web", "exit"); r.code != 7 {
		t.Errorf("exec with exit code 7: %+v", r)
	}
	if r := h.run(t, nil, "exec", "web", "nosuch"); r.code != exitFailure || !strings.Contains(r.stderr, "not found") {
		t.Errorf("exec of a missing command: %+v", r)
	}
	if r := h.run(t, nil, "exec", "idle", "echo"); r.code != exitFailure || !strings.Contains(r.stderr, "not running") {
		t.Errorf("exec into a stopped container: %+v", r)
	}
	// A user by name goes to the agent, which looks it up in the
	// container's files; a malformed one is refused here.
	if r := h.run(t, nil, "exec", "-u", "alice:staff", "web", "echo"); r.code != 0 {
		t.Errorf("exec -u NAME:GROUP: %+v", r)
	}
	dev.mu.Lock()
	named := dev.execs[len(dev.execs)-1].GetProcess().GetUser()
	dev.mu.Unlock()
	if named.GetUsername() != "alice:staff" || named.GetUID() != 0 {
		t.Errorf("exec -u alice:staff sent user %v", named)
	}
	for _, bad := range []string{"a:b:c", ":staff", "alice:"} {
		if r := h.run(t, nil, "exec", "-u", bad, "web", "echo"); r.code != exitUsage {
			t.Errorf("exec -u %q: %+v", bad, r)
		}
	}
	if r := h.run(t, nil, "exec", "web"); r.code != exitUsage {
		t.Errorf("exec without a command: %+v", r)
	}

	// A VM's name: the command runs in the VM, with a note.
	r = h.run(t, nil, "exec", "dev", "--", "uname", "-a")
	if r.code != 3 || r.stdout != "vm:uname -a\n" || !strings.Contains(r.stderr, "cabin vm exec dev") {
		t.Errorf("exec VM: %+v", r)
	}
	r = h.run(t, nil, "vm", "exec", "dev", "uname")
	if r.code != 3 || r.stdout != "vm:uname\n" || r.stderr != "" {
		t.Errorf("vm exec: %+v", r)
	}
	// Neither a container nor a VM.
	if r := h.run(t, nil, "exec", "nothing", "true"); r.code != exitFailure || !strings.Contains(r.stderr, `no container "nothing"`) {
		t.Errorf("exec in nothing: %+v", r)
	}
}

func TestStop(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	dev.add("polite", ctrRunning)
	dev.add("stubborn", ctrRunning).stubborn = true
	dev.add("done", ctrStopped)
	r := h.run(t, nil, "stop", "-t", "1", "polite", "stubborn", "done")
	if r.code != 0 || r.stdout != "polite\nstubborn\ndone\n" {
		t.Fatalf("stop: %+v", r)
	}
	dev.mu.Lock()
	sigs := slices.Clone(dev.signals)
	dev.mu.Unlock()
	slices.Sort(sigs)
	want := []string{"polite/:terminated", "stubborn/:killed", "stubborn/:terminated"}
	if !slices.Equal(sigs, want) {
		t.Errorf("signals %v, want %v (SIGTERM, then SIGKILL only for the one that stayed)", sigs, want)
	}
	dev.add("now", ctrRunning)
	if r := h.run(t, nil, "stop", "-t", "0", "now"); r.code != 0 {
		t.Errorf("stop -t 0: %+v", r)
	}
	dev.mu.Lock()
	last := dev.signals[len(dev.signals)-1]
	dev.mu.Unlock()
	if last != "now/:killed" {
		t.Errorf("stop -t 0 sent %s, want SIGKILL at once", last)
	}
	r = h.run(t, nil, "stop", "ghost", "polite")
	if r.code != exitFailure || r.stdout != "polite\n" || !strings.Contains(r.stderr, "ghost") {
		t.Errorf("stop of an unknown and a known container: %+v", r)
	}
	if r := h.run(t, nil, "stop", "-t", "-1", "x"); r.code != exitUsage {
		t.Errorf("stop -t -1: %+v", r)
	}
	if r := h.run(t, nil, "stop"); r.code != exitUsage {
		t.Errorf("stop of nothing: %+v", r)
	}
}

func TestRm(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	dev.add("live", ctrRunning)
	dev.add("done", ctrStopped)
	dev.add("new", ctrCreated)
	r := h.run(t, nil, "rm", "live", "done", "new")
	if r.code != exitFailure || r.stdout != "done\nnew\n" || !strings.Contains(r.stderr, "live") || !strings.Contains(r.stderr, "-f") {
		t.Fatalf("rm of a running container: %+v", r)
	}
	dev.mu.Lock()
	_, kept := dev.containers["live"]
	dev.mu.Unlock()
	if !kept {
		t.Fatal("rm without -f removed a running container")
	}
	if r := h.run(t, nil, "rm", "-f", "live"); r.code != 0 || r.stdout != "live\n" {
		t.Fatalf("rm -f: %+v", r)
	}
	dev.mu.Lock()
	removed := slices.Clone(dev.removed)
	dev.mu.Unlock()
	if !slices.Equal(removed, []string{"done", "new", "live"}) && !slices.Equal(removed, []string{"new", "done", "live"}) {
		t.Errorf("removed %v", removed)
	}
}

func TestLogs(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	c := dev.add("web", ctrStopped)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	out := containersv1.LogStream_LOG_STREAM_STDOUT
	c.logs = []*containersv1.ContainerLogsResponse{
		{Stream: out, Time: timestamppb.New(t0), Data: []byte("one\ntw"), Dropped: 2048},
		{Stream: containersv1.LogStream_LOG_STREAM_STDERR, Time: timestamppb.New(t0), Data: []byte("oops\n")},
		{Stream: out, Time: timestamppb.New(t0.Add(time.Second)), Data: []byte("o\nthree\n")},
	}
	r := h.run(t, nil, "logs", "web")
	if r.code != 0 || r.stdout != "one\ntwo\nthree\n" || !strings.Contains(r.stderr, "oops\n") || !strings.Contains(r.stderr, "2 KiB") {
		t.Fatalf("logs: %+v", r)
	}
	r = h.run(t, nil, "logs", "-t", "web")
	want := "2026-01-02T03:04:05Z one\n2026-01-02T03:04:05Z two\n2026-01-02T03:04:06Z three\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("logs -t: %q, want %q", r.stdout, want)
	}
	r = h.run(t, nil, "logs", "--tail", "1", "web")
	if r.code != 0 || r.stdout != "o\nthree\n" {
		t.Fatalf("logs --tail 1: %+v", r)
	}
	r = h.run(t, nil, "logs", "--json", "web")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var first map[string]any
	if r.code != 0 || len(lines) != 3 || json.Unmarshal([]byte(lines[0]), &first) != nil || first["stream"] != "LOG_STREAM_STDOUT" {
		t.Fatalf("logs --json: %+v", r)
	}
	if r := h.run(t, nil, "logs", "-f", "web"); r.code != 0 {
		t.Fatalf("logs -f of a stopped container: %+v", r)
	}
	for _, bad := range []string{"-1", "x"} {
		if r := h.run(t, nil, "logs", "--tail", bad, "web"); r.code != exitUsage {
			t.Errorf("--tail %s: %+v", bad, r)
		}
	}
}

func TestCp(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	c := dev.add("web", ctrRunning)
	dir := t.TempDir()
	src := filepath.Join(dir, "in.txt")
	data := []byte(strings.Repeat("cabin\n", 100000))
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := h.run(t, nil, "cp", src, "web:/tmp/"); r.code != 0 {
		t.Fatalf("cp in: %+v", r)
	}
	dev.mu.Lock()
	got := c.files["/tmp/in.txt"]
	dev.mu.Unlock()
	if string(got) != string(data) {
		t.Fatalf("cp in: %d bytes arrived of %d", len(got), len(data))
	}
	c.files["/etc/motd"] = []byte("hello\n")
	if r := h.run(t, nil, "cp", "web:/etc/motd", dir); r.code != 0 {
		t.Fatalf("cp out: %+v", r)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "motd")); err != nil || string(b) != "hello\n" {
		t.Fatalf("cp out: %q, %v", b, err)
	}
	if r := h.run(t, nil, "cp", "web:/etc/motd", "-"); r.code != 0 || r.stdout != "hello\n" {
		t.Fatalf("cp out to -: %+v", r)
	}
	r := h.run(t, nil, "cp", "web:/nope", filepath.Join(dir, "x"))
	if r.code != exitFailure {
		t.Fatalf("cp of a missing file: %+v", r)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("a failed cp left files: %v", entries)
	}
	for _, bad := range [][]string{{"cp", "a", "b"}, {"cp", "web:/a", "web:/b"}, {"cp", "web:rel", "x"}, {"cp", src}} {
		if r := h.run(t, nil, bad...); r.code != exitUsage {
			t.Errorf("%v: %+v, want a usage error", bad, r)
		}
	}
}

func TestSplitContainerPath(t *testing.T) {
	for _, c := range []struct {
		in       string
		id, path string
		ok       bool
	}{
		{"web:/etc", "web", "/etc", true},
		{"./web:/etc", "", "", false},
		{"/abs:x", "", "", false},
		{"plain", "", "", false},
		{"bad id:/x", "", "", false},
	} {
		id, p, ok := splitContainerPath(c.in)
		if id != c.id || p != c.path || ok != c.ok {
			t.Errorf("%q: %q %q %v", c.in, id, p, ok)
		}
	}
}

func TestStats(t *testing.T) {
	h := startHost(t)
	c := h.vm("dev").add("web", ctrRunning)
	c.stats = &kata.StatsContainerResponse{
		CgroupStats: &kata.CgroupStats{
			CpuStats:    &kata.CpuStats{CpuUsage: &kata.CpuUsage{TotalUsage: 1e9}},
			MemoryStats: &kata.MemoryStats{Usage: &kata.MemoryData{Usage: 30 << 20, Limit: 100 << 20}, Stats: map[string]uint64{"inactive_file": 10 << 20}},
			PidsStats:   &kata.PidsStats{Current: 4},
			BlkioStats: &kata.BlkioStats{IoServiceBytesRecursive: []*kata.BlkioStatsEntry{
				{Op: "Read", Value: 1000}, {Op: "Write", Value: 2000}, {Op: "Total", Value: 3000}}},
		},
		NetworkStats: []*kata.NetworkStats{{Name: "eth0", RxBytes: 5, TxBytes: 6}, {Name: "lo", RxBytes: 1, TxBytes: 1}},
	}
	r := h.run(t, nil, "stats", "--no-stream", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 || len(rows) != 1 {
		t.Fatalf("stats --json: %+v, %v", r, err)
	}
	s := rows[0]
	if s["id"] != "web" || s["vm"] != "dev" || s["memory_usage_bytes"] != float64(20<<20) || s["memory_limit_bytes"] != float64(100<<20) ||
		s["memory_percent"] != float64(20) || s["pids"] != float64(4) || s["net_rx_bytes"] != float64(6) || s["net_tx_bytes"] != float64(7) ||
		s["block_read_bytes"] != float64(1000) || s["block_write_bytes"] != float64(2000) {
		t.Errorf("stats: %v", s)
	}
	// 100 ms of CPU between two samples about a second apart.
	if cpu, _ := s["cpu_percent"].(float64); cpu <= 0 || cpu > 10 {
		t.Errorf("cpu %v%%", s["cpu_percent"])
	}
	r = h.run(t, nil, "stats", "--no-stream", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "20 MiB / 100 MiB") || !strings.Contains(r.stdout, "20.00%") {
		t.Errorf("stats table: %+v", r)
	}
	if r := h.run(t, nil, "stats", "--no-stream", "ghost"); r.code != exitFailure {
		t.Errorf("stats of an unknown container: %+v", r)
	}
}

func TestCompleteContainers(t *testing.T) {
	h := startHost(t)
	h.vm("dev").add("web", ctrRunning)
	h.vm("dev2").add("worker", ctrRunning)
	r := h.run(t, nil, "__complete", "logs", "w")
	if r.code != 0 || !strings.Contains(r.stdout, "web\n") || !strings.Contains(r.stdout, "worker\n") {
		t.Fatalf("complete logs: %+v", r)
	}
	r = h.run(t, nil, "__complete", "rm", "web", "w")
	if r.code != 0 || strings.Contains(r.stdout, "web\n") || !strings.Contains(r.stdout, "worker\n") {
		t.Fatalf("complete rm's second: %+v", r)
	}
	r = h.run(t, nil, "__complete", "exec", "web", "")
	if r.code != 0 || strings.Contains(r.stdout, "worker") {
		t.Fatalf("complete exec's command: %+v", r)
	}
}

// TestExecStartsFromTheContainer: without -e, -w and -u an exec gets the
// container's environment, directory and user, as docker exec does; the
// flags go over them.
func TestExecStartsFromTheContainer(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	web := dev.add("web", ctrRunning)
	web.c.Env = []string{"PATH=/app/bin:/bin", "GREETING=hi", "HOME=/home/app"}
	web.c.Cwd, web.c.Uid, web.c.Gid = "/work", 1000, 1000
	if r := h.run(t, nil, "exec", "web", "echo"); r.code != 0 {
		t.Fatalf("exec: %+v", r)
	}
	if r := h.run(t, nil, "exec", "-e", "GREETING=over", "-e", "NEW=1", "-w", "/tmp", "-u", "0", "web", "echo"); r.code != 0 {
		t.Fatalf("exec with flags: %+v", r)
	}
	dev.mu.Lock()
	plain, flagged := dev.execs[0].GetProcess(), dev.execs[1].GetProcess()
	dev.mu.Unlock()
	if !slices.Equal(plain.GetEnv(), web.c.Env) || plain.GetCwd() != "/work" || plain.GetUser().GetUID() != 1000 || plain.GetUser().GetGID() != 1000 {
		t.Errorf("a plain exec: env %q, cwd %q, user %v; want the container's", plain.GetEnv(), plain.GetCwd(), plain.GetUser())
	}
	want := []string{"PATH=/app/bin:/bin", "GREETING=over", "HOME=/home/app", "NEW=1"}
	if !slices.Equal(flagged.GetEnv(), want) || flagged.GetCwd() != "/tmp" || flagged.GetUser().GetUID() != 0 {
		t.Errorf("exec -e -w -u: env %q (want %q), cwd %q, user %v", flagged.GetEnv(), want, flagged.GetCwd(), flagged.GetUser())
	}
}
