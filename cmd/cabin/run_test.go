package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/relay"
)

// fakeAgent is an AgentService with one container process: its output is
// served from stdout/stderr in reads of at most the asked length, then
// empty reads once exited is closed; the wait returns status.
type fakeAgent struct {
	kata.UnimplementedAgentServiceServer
	createErr error

	mu       sync.Mutex
	calls    []string
	create   *kata.CreateContainerRequest
	vm       string
	stdin    strings.Builder
	signals  []uint32
	stdout   []byte
	stderr   []byte
	exitCode int32
	signal   int32 // the process was killed by it: reported as Kata does
	exited   chan struct{}
	exitOnce sync.Once
}

func newFakeAgent() *fakeAgent { return &fakeAgent{exited: make(chan struct{})} }

func (f *fakeAgent) record(ctx context.Context, call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(relay.MetadataVM)) > 0 {
		f.vm = md.Get(relay.MetadataVM)[0]
	}
}

func (f *fakeAgent) exit() { f.exitOnce.Do(func() { close(f.exited) }) }

func (f *fakeAgent) CreateContainer(ctx context.Context, req *kata.CreateContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "create")
	f.mu.Lock()
	f.create = req
	f.mu.Unlock()
	if f.createErr != nil {
		return nil, f.createErr
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) StartContainer(ctx context.Context, req *kata.StartContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "start")
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) read(ctx context.Context, buf *[]byte, n uint32) (*kata.ReadStreamResponse, error) {
	f.mu.Lock()
	if len(*buf) > 0 {
		k := min(int(n), len(*buf))
		data := (*buf)[:k]
		*buf = (*buf)[k:]
		f.mu.Unlock()
		return &kata.ReadStreamResponse{Data: data}, nil
	}
	f.mu.Unlock()
	select {
	case <-f.exited:
		return &kata.ReadStreamResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) ReadStdout(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return f.read(ctx, &f.stdout, req.GetLen())
}

func (f *fakeAgent) ReadStderr(ctx context.Context, req *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
	return f.read(ctx, &f.stderr, req.GetLen())
}

func (f *fakeAgent) WriteStdin(ctx context.Context, req *kata.WriteStreamRequest) (*kata.WriteStreamResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Take at most 2 bytes a call, so the CLI must write the rest again.
	n := min(2, len(req.GetData()))
	f.stdin.Write(req.GetData()[:n])
	return &kata.WriteStreamResponse{Len: uint32(n)}, nil
}

func (f *fakeAgent) CloseStdin(ctx context.Context, req *kata.CloseStdinRequest) (*emptypb.Empty, error) {
	f.record(ctx, "close-stdin")
	f.exit()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) SignalProcess(ctx context.Context, req *kata.SignalProcessRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	f.signals = append(f.signals, req.GetSignal())
	f.mu.Unlock()
	f.exit()
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) WaitProcess(ctx context.Context, req *kata.WaitProcessRequest) (*kata.WaitProcessResponse, error) {
	select {
	case <-f.exited:
		f.record(ctx, "wait")
		if f.signal != 0 {
			grpc.SetTrailer(ctx, metadata.Pairs(kata.ExitSignalTrailer, strconv.Itoa(int(f.signal))))
			return &kata.WaitProcessResponse{Status: f.signal}, nil
		}
		return &kata.WaitProcessResponse{Status: f.exitCode}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeAgent) RemoveContainer(ctx context.Context, req *kata.RemoveContainerRequest) (*emptypb.Empty, error) {
	f.record(ctx, "remove")
	return &emptypb.Empty{}, nil
}

func (f *fakeAgent) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func TestRunOutputExitCodeAndSpec(t *testing.T) {
	d := startDaemon(t)
	d.agent.stdout = []byte(strings.Repeat("out", 20000)) // more than one read
	d.agent.stderr = []byte("warning\n")
	d.agent.exitCode = 3
	d.agent.exit()
	r := d.run(t, nil, "run", "--name", "c1", "web", "--", "sh", "-c", "exit 3")
	if r.code != 3 {
		t.Fatalf("exit code %d, want 3; stderr:\n%s", r.code, r.stderr)
	}
	if r.stdout != strings.Repeat("out", 20000) || r.stderr != "warning\n" {
		t.Errorf("stdout %d bytes, stderr %q", len(r.stdout), r.stderr)
	}
	if got, want := d.agent.callList(), []string{"create", "start", "wait", "remove"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	if d.agent.vm != "web" {
		t.Errorf("relayed to VM %q, want web", d.agent.vm)
	}
	req := d.agent.create
	if req.GetContainerId() != "c1" || req.GetExecId() != "c1" {
		t.Errorf("ids %q/%q", req.GetContainerId(), req.GetExecId())
	}
	spec := req.GetOCI()
	if got := spec.GetProcess().GetArgs(); !slices.Equal(got, []string{"sh", "-c", "exit 3"}) {
		t.Errorf("args %q", got)
	}
	if spec.GetProcess().GetTerminal() {
		t.Error("terminal without -t")
	}
	// The old form runs busybox on a writable overlay of its own.
	if root := spec.GetRoot(); root.GetPath() != containerRoot("c1") || root.GetReadonly() {
		t.Errorf("root %v", root)
	}
	st := req.GetStorages()
	if len(st) != 5 || st[0].GetDriver() != "9p" || st[0].GetSource() != bootcfg.RootfsTag || st[0].GetMountPoint() != rootfsMount ||
		st[4].GetDriver() != "overlayfs" || st[4].GetMountPoint() != containerRoot("c1") ||
		!slices.Contains(st[4].GetOptions(), "lowerdir="+rootfsMount+"/"+bootcfg.RootfsBusybox) {
		t.Errorf("storages %v", st)
	}
	want, _ := kata.SeccompFromOCI(defaultSeccomp())
	if got := spec.GetLinux().GetSeccomp(); !proto.Equal(got, want) {
		t.Errorf("seccomp %v, want the default filter", got)
	}
}

// TestRunSeccomp: --seccomp unconfined sends no filter, a profile file is
// sent as written.
func TestRunSeccomp(t *testing.T) {
	d := startDaemon(t)
	d.agent.exit()
	if r := d.run(t, nil, "run", "--seccomp", "unconfined", "--vm", "web", "busybox", "true"); r.code != 0 {
		t.Fatalf("--seccomp unconfined: %+v", r)
	}
	if s := d.agent.create.GetOCI().GetLinux().GetSeccomp(); s != nil {
		t.Errorf("--seccomp unconfined sent %v", s)
	}

	profile := filepath.Join(t.TempDir(), "profile.json")
	os.WriteFile(profile, []byte(`{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
		"syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
		             {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]}`), 0o644)
	d = startDaemon(t)
	d.agent.exit()
	if r := d.run(t, nil, "run", "--seccomp", profile, "--vm", "web", "busybox", "true"); r.code != 0 {
		t.Fatalf("--seccomp FILE: %+v", r)
	}
	want := &kata.LinuxSeccomp{
		DefaultAction: "SCMP_ACT_ERRNO",
		Architectures: []string{"SCMP_ARCH_X86_64"},
		Syscalls: []*kata.LinuxSyscall{
			{Names: []string{"read", "write"}, Action: "SCMP_ACT_ALLOW"},
			{Names: []string{"kill"}, Action: "SCMP_ACT_ALLOW", Args: []*kata.LinuxSeccompArg{{Index: 1, Op: "SCMP_CMP_EQ"}}},
		},
	}
	if got := d.agent.create.GetOCI().GetLinux().GetSeccomp(); !proto.Equal(got, want) {
		t.Errorf("--seccomp FILE sent %v\nwant %v", got, want)
	}
}

// TestDefaultSeccomp: the default filter refuses what it lists, user
// namespaces by clone's and unshare's flags, and clone3 with ENOSYS, on
// every x86 ABI, and allows the rest.
func TestDefaultSeccomp(t *testing.T) {
	s := defaultSeccomp()
	if s.DefaultAction != specs.ActAllow || !slices.Equal(s.Architectures, []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}) {
		t.Errorf("default action %s, architectures %v", s.DefaultAction, s.Architectures)
	}
	refused := map[string]uint{}
	for _, c := range s.Syscalls {
		if c.Action != specs.ActErrno || c.ErrnoRet == nil {
			t.Errorf("rule for %v: %s without an errno", c.Names, c.Action)
			continue
		}
		for _, n := range c.Names {
			if _, dup := refused[n]; dup {
				t.Errorf("%s listed twice", n)
			}
			refused[n] = *c.ErrnoRet
		}
		if slices.Contains(c.Names, "clone") {
			if len(c.Args) != 1 || c.Args[0] != (specs.LinuxSeccompArg{Index: 0, Value: unix.CLONE_NEWUSER, ValueTwo: unix.CLONE_NEWUSER, Op: specs.OpMaskedEqual}) {
				t.Errorf("clone refused for %v; want only with CLONE_NEWUSER", c.Args)
			}
		} else if len(c.Args) != 0 {
			t.Errorf("rule for %v has conditions %v", c.Names, c.Args)
		}
	}
	for name, errno := range map[string]uint{
		"kexec_load": uint(unix.EPERM), "init_module": uint(unix.EPERM), "bpf": uint(unix.EPERM),
		"keyctl": uint(unix.EPERM), "mount": uint(unix.EPERM), "setns": uint(unix.EPERM),
		"io_uring_setup": uint(unix.EPERM), "unshare": uint(unix.EPERM), "clone3": uint(unix.ENOSYS),
	} {
		if got, ok := refused[name]; !ok || got != errno {
			t.Errorf("%s: refused %t with errno %d, want %d", name, ok, got, errno)
		}
	}
	for _, name := range []string{"read", "execve", "ptrace", "chroot", "personality"} {
		if _, ok := refused[name]; ok {
			t.Errorf("%s refused", name)
		}
	}
	// Every name is one libseccomp knows for x86-64: the runtime skips
	// names it does not know, so a misspelt one would refuse nothing.
	for name := range refused {
		if _, ok := x86_64Syscalls[name]; !ok {
			t.Errorf("%s: not an x86-64 system call", name)
		}
	}
}

func TestRunStdinWrittenInFull(t *testing.T) {
	d := startDaemon(t)
	r := d.run(t, strings.NewReader("hello, container"), "run", "-i", "--vm", "web", "busybox", "cat")
	if r.code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", r.code, r.stderr)
	}
	if got := d.agent.stdin.String(); got != "hello, container" {
		t.Errorf("stdin %q", got)
	}
	if id := d.agent.create.GetContainerId(); !validContainerID(id) || !strings.HasPrefix(id, "run-") {
		t.Errorf("generated container id %q", id)
	}
}

func TestRunForwardsSignals(t *testing.T) {
	d := startDaemon(t)
	d.agent.signal = int32(syscall.SIGINT)
	go func() {
		for !slices.Contains(d.agent.callList(), "start") {
			syscall.Nanosleep(&syscall.Timespec{Nsec: 1e6}, nil)
		}
		syscall.Kill(syscall.Getpid(), syscall.SIGINT)
	}()
	r := d.run(t, nil, "run", "--vm", "web", "busybox", "sleep", "100")
	if r.code != 130 {
		t.Errorf("exit code %d, want 130; stderr:\n%s", r.code, r.stderr)
	}
	if !slices.Equal(d.agent.signals, []uint32{uint32(syscall.SIGINT)}) {
		t.Errorf("signals %v", d.agent.signals)
	}
}

func TestRunCreateFails(t *testing.T) {
	d := startDaemon(t)
	d.agent.createErr = status.Error(codes.InvalidArgument, "storage: no share tagged cabinRootfs")
	r := d.run(t, nil, "run", "--vm", "web", "busybox", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "no share tagged cabinRootfs") {
		t.Errorf("got %+v", r)
	}
	// Nothing was made, so nothing is removed.
	if got := d.agent.callList(); !slices.Equal(got, []string{"create"}) {
		t.Errorf("calls %v", got)
	}
}

func TestRunBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"run"},
		{"run", "--vm", "web", "busybox"},
		{"run", "--vm", "web", "dev", "--", "true"},
		{"run", "dev", "--"},
		{"run", "-d", "-i", "busybox", "true"},
		{"run", "--memory", "1k", "--vm", "web", "busybox", "true"},
		{"run", "--memory", "lots", "--vm", "web", "busybox", "true"},
		{"run", "--log-max-size", "8M", "--vm", "web", "busybox", "true"},
		{"run", "-d", "--log-max-size", "1K", "--vm", "web", "busybox", "true"},
		{"run", "-d", "--log-max-size", "1G", "--vm", "web", "busybox", "true"},
		{"run", "-d", "--log-max-size", "lots", "--vm", "web", "busybox", "true"},
		{"run", "--cpus", "-2", "--vm", "web", "busybox", "true"},
		{"run", "--mount", "/a", "--vm", "web", "busybox", "true"},
		{"run", "--mount", "/a:rel", "--vm", "web", "busybox", "true"},
		{"run", "--mount", "/a:/", "--vm", "web", "busybox", "true"},
		{"run", "--mount", "/a:/b:rx", "--vm", "web", "busybox", "true"},
		{"run", "-u", "a:b:c", "--vm", "web", "busybox", "true"},
		{"run", "--rootfs", "../etc", "--vm", "web", "busybox", "true"},
		{"run", "--rootfs", "", "--vm", "web", "busybox", "true"},
		{"run", "--name", "-x", "--vm", "web", "busybox", "true"},
		{"run", "--name", "a/b", "--vm", "web", "busybox", "true"},
		{"run", "--name", strings.Repeat("a", 65), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", "/nonexistent/profile.json", "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"defaultAction": "SCMP_ACT_ERRNO", "archMap": []}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"syscalls": []}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [""], "action": "SCMP_ACT_ALLOW"}]}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/x"}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, `{"defaultAction": "SCMP_ACT_ERRNO"} {}`), "--vm", "web", "busybox", "true"},
		{"run", "--seccomp", badProfile(t, strings.Repeat(" ", maxProfileBytes+1)), "--vm", "web", "busybox", "true"},
	} {
		d := startDaemon(t)
		r := d.run(t, nil, args...)
		if r.code != exitUsage {
			t.Errorf("%q: exit code %d, want %d; stderr:\n%s", args, r.code, exitUsage, r.stderr)
		}
		if calls := d.agent.callList(); len(calls) != 0 {
			t.Errorf("%q: calls %v, want none", args, calls)
		}
	}
}

// badProfile writes a seccomp profile file for a test of bad input.
func badProfile(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunExitStatus(t *testing.T) {
	for _, c := range []struct {
		status  int32
		trailer metadata.MD
		want    int
	}{
		{0, nil, 0},
		{9, nil, 9}, // exit 9: no trailer
		{9, metadata.Pairs(kata.ExitSignalTrailer, "9"), 137},
		{15, metadata.Pairs(kata.ExitSignalTrailer, "bad"), 15},
		{300, nil, 255},
		{-1, nil, 255},
	} {
		if got := exitStatus(c.status, c.trailer); got != c.want {
			t.Errorf("exitStatus(%d, %v) = %d, want %d", c.status, c.trailer, got, c.want)
		}
	}
}
