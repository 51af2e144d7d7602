package kata

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/cabinvm/cabin/api/kata"
)

// newClient serves a real Service for cfg over an in-memory connection.
// cfg's Reaper and Log default to the child's reaper (see childSetup) or
// one for this test, and a quiet log.
func newClient(t *testing.T, cfg Config) pb.AgentServiceClient {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog()
	}
	if cfg.Reaper == nil {
		cfg.Reaper = childReaper
	}
	if cfg.Reaper == nil {
		cfg.Reaper = startReaper(t)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, NewService(New(cfg)))
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
	})
	return pb.NewAgentServiceClient(conn)
}

// wantCode checks err's code, and that its message starts with prefix.
func wantCode(t *testing.T, what string, err error, code codes.Code, prefix string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.HasPrefix(st.Message(), prefix) {
		t.Errorf("%s: %v (%q), want %v starting %q", what, st.Code(), st.Message(), code, prefix)
	}
}

// processCalls makes every call on a process, with its result.
func processCalls(c pb.AgentServiceClient, ctx context.Context, cid, eid string) map[string]error {
	calls := map[string]error{}
	_, calls["SignalProcess"] = c.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: cid, ExecId: eid, Signal: 15})
	_, calls["WaitProcess"] = c.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: eid})
	_, calls["ReadStdout"] = c.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 10})
	_, calls["ReadStderr"] = c.ReadStderr(ctx, &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 10})
	_, calls["WriteStdin"] = c.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: cid, ExecId: eid, Data: []byte("x")})
	_, calls["CloseStdin"] = c.CloseStdin(ctx, &pb.CloseStdinRequest{ContainerId: cid, ExecId: eid})
	_, calls["TtyWinResize"] = c.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: cid, ExecId: eid, Row: 1, Column: 1})
	return calls
}

// containerCalls makes every call on a container, with its result.
func containerCalls(c pb.AgentServiceClient, ctx context.Context, cid string) map[string]error {
	calls := map[string]error{}
	_, calls["StartContainer"] = c.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: cid})
	_, calls["PauseContainer"] = c.PauseContainer(ctx, &pb.PauseContainerRequest{ContainerId: cid})
	_, calls["ResumeContainer"] = c.ResumeContainer(ctx, &pb.ResumeContainerRequest{ContainerId: cid})
	_, calls["RemoveContainer"] = c.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: cid})
	_, calls["ExecProcess"] = c.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: cid, ExecId: "e1", Process: &pb.Process{Args: []string{"true"}}})
	_, calls["SignalProcess/kill-all"] = c.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: cid, Signal: 9})
	return calls
}

func TestUnknownContainer(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	ctx := t.Context()
	for name, err := range containerCalls(c, ctx, "nope") {
		wantCode(t, name, err, codes.NotFound, "container \"nope\"")
	}
	for _, eid := range []string{"", "nope", "e1"} {
		for name, err := range processCalls(c, ctx, "nope", eid) {
			wantCode(t, name+" "+eid, err, codes.NotFound, "container \"nope\"")
		}
	}
}

func TestBadIDs(t *testing.T) {
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir()})
	ctx := t.Context()
	for _, bad := range []string{"", "../x", "-rf", "a/b", strings.Repeat("x", 65)} {
		for name, err := range containerCalls(c, ctx, bad) {
			wantCode(t, name+" "+bad, err, codes.InvalidArgument, "container_id: ")
		}
		for name, err := range processCalls(c, ctx, bad, "") {
			wantCode(t, name+" "+bad, err, codes.InvalidArgument, "container_id: ")
		}
		if bad == "" {
			continue // empty exec ids mean the init
		}
		for name, err := range processCalls(c, ctx, "c1", bad) {
			wantCode(t, name+" exec "+bad, err, codes.InvalidArgument, "exec_id: ")
		}
		_, err := c.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c1", ExecId: bad, Process: &pb.Process{Args: []string{"true"}}})
		wantCode(t, "ExecProcess "+bad, err, codes.InvalidArgument, "exec_id: ")
		_, err = c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: bad, OCI: minimalSpec()})
		wantCode(t, "CreateContainer "+bad, err, codes.InvalidArgument, "container_id: ")
	}
	for _, sig := range []uint32{0, 65, 1 << 31} {
		_, err := c.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "c1", Signal: sig})
		wantCode(t, "signal", err, codes.InvalidArgument, "signal: ")
	}
	_, err := c.TtyWinResize(ctx, &pb.TtyWinResizeRequest{ContainerId: "c1", Row: 70000, Column: 1})
	wantCode(t, "resize", err, codes.InvalidArgument, "row: ")
}

func minimalSpec() *pb.Spec {
	return &pb.Spec{Process: &pb.Process{Args: []string{"/bin/true"}}, Root: &pb.Root{Path: "/run/rootfs"}}
}

// TestCreateInvalidChangesNothing: a create refused for its input leaves
// no bundle, no storage and no container behind.
func TestCreateInvalidChangesNothing(t *testing.T) {
	bundles := t.TempDir()
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: bundles})
	ctx := t.Context()
	good := &pb.Storage{Driver: "ephemeral", MountPoint: "/run/cabin-test-never"}
	for _, tc := range []struct {
		prefix string
		req    *pb.CreateContainerRequest
	}{
		{"OCI: ", &pb.CreateContainerRequest{}},
		{"OCI.Process.Args: ", &pb.CreateContainerRequest{OCI: &pb.Spec{Process: &pb.Process{}, Root: &pb.Root{Path: "/r"}}}},
		{"OCI.Root.Path: ", &pb.CreateContainerRequest{OCI: &pb.Spec{Process: &pb.Process{Args: []string{"x"}}}}},
		{"exec_id: ", &pb.CreateContainerRequest{ExecId: "other", OCI: minimalSpec()}},
		{"string_user: ", &pb.CreateContainerRequest{StringUser: &pb.StringUser{Uid: "root"}, OCI: minimalSpec()}},
		{"devices[0].type: ", &pb.CreateContainerRequest{Devices: []*pb.Device{{Id: "x"}}, OCI: minimalSpec()}},
		{"devices[0].container_path: ", &pb.CreateContainerRequest{Devices: []*pb.Device{{Type: "mmioblk", VmPath: "/dev/vdb", ContainerPath: "/dev/x"}}, OCI: minimalSpec()}},
		{"sandbox_pidns: ", &pb.CreateContainerRequest{SandboxPidns: true, OCI: minimalSpec()}},
		{"storages[1].driver: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "nvdimm", MountPoint: "/run/x"}}}},
		{"storages[1].fstype: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "blk", Source: "02", MountPoint: "/run/x"}}}},
		{"storages[1].mount_point: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "local", MountPoint: "/run/../etc"}}}},
		{"storages[1].mount_point: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "local", MountPoint: "/etc"}}}},
		{"storages[1].mount_point: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "local", MountPoint: "x"}}}},
		{"storages[1].mount_point: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, good}}},
		{"storages[1].options: ", &pb.CreateContainerRequest{OCI: minimalSpec(), Storages: []*pb.Storage{good, {Driver: "9p", Source: "t", Options: []string{"trans=tcp"}, MountPoint: "/run/y"}}}},
	} {
		tc.req.ContainerId = "c1"
		_, err := c.CreateContainer(ctx, tc.req)
		wantCode(t, tc.prefix, err, codes.InvalidArgument, tc.prefix)
	}
	if entries, _ := os.ReadDir(bundles); len(entries) != 0 {
		t.Errorf("bundles left: %v", entries)
	}
	if _, err := os.Lstat(good.MountPoint); !os.IsNotExist(err) {
		t.Errorf("%s: %v, want it never made", good.MountPoint, err)
	}
	_, err := c.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "c1"})
	wantCode(t, "start after refused creates", err, codes.NotFound, "container")
}

// TestCreateRuntimeFailure: the runtime's exit code becomes the call's
// code, with its message, and the failed create leaves nothing behind.
func TestCreateRuntimeFailure(t *testing.T) {
	for _, tc := range []struct {
		exit string
		code codes.Code
	}{
		{"1", codes.Unknown},
		{"2", codes.InvalidArgument},
		{"4", codes.AlreadyExists},
	} {
		bundles := t.TempDir()
		script := "#!/bin/sh\necho noise >&2\necho 'create failed: reason " + tc.exit + "' >&2\nexit " + tc.exit + "\n"
		c := newClient(t, Config{Runtime: standIn(t, script), Bundles: bundles})
		for range 2 {
			_, err := c.CreateContainer(t.Context(), &pb.CreateContainerRequest{ContainerId: "c1", OCI: minimalSpec()})
			wantCode(t, "exit "+tc.exit, err, tc.code, "cabin-runtime create: create failed: reason "+tc.exit)
		}
		if entries, _ := os.ReadDir(bundles); len(entries) != 0 {
			t.Errorf("exit %s: bundles left: %v", tc.exit, entries)
		}
	}
}

func TestSandboxCalls(t *testing.T) {
	var names []string
	c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(),
		SetHostname: func(n string) error { names = append(names, n); return nil }})
	ctx := t.Context()
	for _, tc := range []struct {
		prefix string
		req    *pb.CreateSandboxRequest
	}{
		{"hostname: ", &pb.CreateSandboxRequest{Hostname: "bad_name"}},
		{"hostname: ", &pb.CreateSandboxRequest{Hostname: strings.Repeat("a", 65)}},
		{"sandbox_id: ", &pb.CreateSandboxRequest{SandboxId: "../x"}},
		{"sandbox_pidns: ", &pb.CreateSandboxRequest{SandboxPidns: true}},
		{"guest_hook_path: ", &pb.CreateSandboxRequest{GuestHookPath: "/hooks"}},
		{"kernel_modules: ", &pb.CreateSandboxRequest{KernelModules: []*pb.KernelModule{{Name: "x"}}}},
		{"storages[0].mount_point: ", &pb.CreateSandboxRequest{Hostname: "ok", Storages: []*pb.Storage{{Driver: "local", MountPoint: "/tmp/x"}}}},
	} {
		_, err := c.CreateSandbox(ctx, tc.req)
		wantCode(t, tc.prefix, err, codes.InvalidArgument, tc.prefix)
	}
	if len(names) != 0 {
		t.Errorf("refused sandboxes set the hostname: %q", names)
	}
	if _, err := c.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "box-1", SandboxId: "sb", Dns: []string{"nameserver 10.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "box-2"})
	wantCode(t, "second sandbox", err, codes.AlreadyExists, "sandbox")
	if _, err := c.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSandbox(ctx, &pb.CreateSandboxRequest{Hostname: "box-3"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, ","); got != "box-1,box-3" {
		t.Errorf("hostnames set: %s", got)
	}
}
