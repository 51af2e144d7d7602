package kata

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	pb "github.com/cabinvm/cabin/api/kata"
)

// TestKeptContainers runs containers with the real cabin-runtime, as
// root, in a child subreaper (see TestContainers), driven through both
// AgentService and cabin.v1.Containers on one sandbox: the list, kept
// output, autoremove, and copies in and out.
func TestKeptContainers(t *testing.T) {
	subtests := []string{"list", "kept_output", "flood", "autoremove", "copy", "copy_hostile"}
	if inChild("TestKeptContainers") {
		keptSuite(t, subtests)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containers")
	}
	rtPath, rootfs := containerFixture(t)
	runChild(t, "TestKeptContainers", subtests, runtimeEnv+"="+rtPath, rootfsEnv+"="+rootfs)
}

// kept is ctr with the Containers client of the same sandbox.
type kept struct {
	*ctr
	cs containersv1.ContainersClient
}

func keptSuite(t *testing.T, subtests []string) {
	childSetup(t)
	tmp := t.TempDir()
	h := &ctr{rootfs: os.Getenv(rootfsEnv), dir: testDir(t), bundles: filepath.Join(tmp, "bundles")}
	sb := New(Config{Log: testLog(), Reaper: childReaper, Runtime: os.Getenv(runtimeEnv),
		RuntimeRoot: filepath.Join(tmp, "runtime"), Bundles: h.bundles})
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, NewService(sb))
	containersv1.RegisterContainersServer(srv, NewContainersService(sb))
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.c = pb.NewAgentServiceClient(conn)
	k := &kept{ctr: h, cs: containersv1.NewContainersClient(conn)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := h.c.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("destroy the sandbox: %v", err)
		}
		conn.Close()
		srv.Stop()
		removeCgroups(t)
	})
	tests := map[string]func(*kept){
		"list":         (*kept).testList,
		"kept_output":  (*kept).testKeptOutput,
		"flood":        (*kept).testFlood,
		"autoremove":   (*kept).testAutoremove,
		"copy":         (*kept).testCopy,
		"copy_hostile": (*kept).testCopyHostile,
	}
	for _, name := range subtests {
		t.Run(name, func(t *testing.T) {
			hh := *h
			hh.t = t
			tests[name](&kept{ctr: &hh, cs: k.cs})
		})
	}
}

// keptSpec is a spec with the annotations given.
func (k *kept) keptSpec(id string, annotations map[string]string, args ...string) *pb.Spec {
	s := k.spec(id, false, args...)
	s.Annotations = annotations
	return s
}

func (k *kept) list() map[string]*containersv1.Container {
	k.t.Helper()
	resp, err := k.cs.List(k.ctx(), &containersv1.ListContainersRequest{})
	if err != nil {
		k.t.Fatalf("List: %v", err)
	}
	m := map[string]*containersv1.Container{}
	for _, c := range resp.GetContainers() {
		m[c.GetId()] = c
	}
	return m
}

// logs reads a container's kept output.
func (k *kept) logs(id string, follow bool) (stdout, stderr string, dropped int64, err error) {
	stream, err := k.cs.Logs(k.ctx(), &containersv1.ContainerLogsRequest{ContainerId: id, Follow: follow})
	if err != nil {
		return "", "", 0, err
	}
	var o, e bytes.Buffer
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return o.String(), e.String(), dropped, nil
		}
		if err != nil {
			return o.String(), e.String(), dropped, err
		}
		dropped += m.GetDropped()
		if m.GetStream() == containersv1.LogStream_LOG_STREAM_STDERR {
			e.Write(m.GetData())
		} else {
			o.Write(m.GetData())
		}
	}
}

// testList: List reports each container's state, image, command, times,
// pid and exit status as they change.
func (k *kept) testList() {
	k.create("l1", k.keptSpec("l1", map[string]string{AnnotationImage: "test:1", AnnotationCreated: "2026-01-02T03:04:05Z"}, "trap"))
	c := k.list()["l1"]
	if c.GetState() != containersv1.ContainerState_CONTAINER_STATE_CREATED || c.GetImage() != "test:1" ||
		c.GetCreated().AsTime().Year() != 2026 || c.GetStarted() != nil || c.GetPid() <= 1 ||
		strings.Join(c.GetCommand(), " ") != "/prog trap" {
		k.t.Fatalf("created: %v", c)
	}
	k.start("l1")
	k.readUntil("l1", "l1", "ready")
	if c := k.list()["l1"]; c.GetState() != containersv1.ContainerState_CONTAINER_STATE_RUNNING || c.GetStarted() == nil {
		k.t.Fatalf("running: %v", c)
	}
	if _, err := k.c.SignalProcess(k.ctx(), &pb.SignalProcessRequest{ContainerId: "l1", Signal: 15}); err != nil {
		k.t.Fatal(err)
	}
	if code := k.wait("l1", ""); code != 7 {
		k.t.Fatalf("exit %d", code)
	}
	c = k.list()["l1"]
	if c.GetState() != containersv1.ContainerState_CONTAINER_STATE_STOPPED || c.GetExitCode() != 7 || c.GetPid() != 0 || c.GetFinished() == nil {
		k.t.Fatalf("stopped: %v", c)
	}
	k.remove("l1")
	if _, ok := k.list()["l1"]; ok {
		k.t.Fatal("listed after removal")
	}
	_, err := k.c.CreateContainer(k.ctx(), &pb.CreateContainerRequest{ContainerId: "l2", OCI: k.keptSpec("l2", map[string]string{AnnotationLogs: "always"}, "sleep")})
	wantCode(k.t, "create with a bad annotation", err, codes.InvalidArgument, "OCI.Annotations["+AnnotationLogs+"]")
	if _, ok := k.list()["l2"]; ok {
		k.t.Fatal("a refused container is listed")
	}
}

// testKeptOutput: a kept container's output is drained whether or not
// anyone reads; Logs returns both streams, follows to the end; ReadStdout
// of it is refused; Logs of a container not kept is refused.
func (k *kept) testKeptOutput() {
	k.create("k1", k.keptSpec("k1", map[string]string{AnnotationLogs: LogsKeep}, "write", "200000"))
	k.start("k1")
	_, err := k.read("k1", "", false)
	wantCode(k.t, "ReadStdout of a kept container", err, codes.FailedPrecondition, "the output of container")
	if code := k.wait("k1", ""); code != 0 {
		k.t.Fatalf("exit %d", code)
	}
	out, errOut, dropped, err := k.logs("k1", true)
	if err != nil || out != string(ctrPattern(200000)) || errOut != "" || dropped != 0 {
		k.t.Fatalf("Logs: %d bytes, %q, dropped %d, %v", len(out), errOut, dropped, err)
	}
	k.remove("k1")

	k.create("k2", k.keptSpec("k2", map[string]string{AnnotationLogs: LogsKeep}, "stderr", "oops"))
	k.start("k2")
	out, errOut, _, err = k.logs("k2", true)
	if err != nil || out != "" || errOut != "oops" {
		k.t.Fatalf("Logs -f of stderr: %q %q, %v", out, errOut, err)
	}
	k.remove("k2")
	_, _, _, err = k.logs("k2", false)
	wantCode(k.t, "Logs of a removed container", err, codes.NotFound, "")

	k.run("plain", false, "exit", "0")
	_, _, _, err = k.logs("plain", false)
	wantCode(k.t, "Logs of a container not kept", err, codes.FailedPrecondition, "")
	k.wait("plain", "")
	k.remove("plain")
}

// testFlood: a container writing far more than the bound, with nobody
// reading, runs to its end; the log holds the last of it, whole, and says
// how much went; the agent answers meanwhile.
func (k *kept) testFlood() {
	const n = 8 << 20
	k.create("flood", k.keptSpec("flood", map[string]string{AnnotationLogs: LogsKeep}, "write", strconv.Itoa(n)))
	k.start("flood")
	if _, err := k.cs.List(k.ctx(), &containersv1.ListContainersRequest{}); err != nil {
		k.t.Fatalf("List during the flood: %v", err)
	}
	if code := k.wait("flood", ""); code != 0 {
		k.t.Fatalf("exit %d", code)
	}
	out, _, dropped, err := k.logs("flood", true)
	if err != nil {
		k.t.Fatal(err)
	}
	if int64(len(out))+dropped != n || len(out) > 2*logFileMax || !bytes.HasSuffix(ctrPattern(n), []byte(out)) {
		k.t.Fatalf("kept %d bytes, dropped %d, of %d", len(out), dropped, n)
	}
	k.remove("flood")
}

// testAutoremove: a kept container asking for it goes once it has exited
// and its output is drained; one not kept, once it is waited for and read.
func (k *kept) testAutoremove() {
	k.create("auto", k.keptSpec("auto", map[string]string{AnnotationLogs: LogsKeep, AnnotationAutoremove: "true"}, "write", "1000"))
	k.start("auto")
	// Following ends with the output, which is before the removal.
	if out, _, _, err := k.logs("auto", true); err != nil && !strings.Contains(err.Error(), "not found") || err == nil && out != string(ctrPattern(1000)) {
		k.t.Fatalf("Logs -f: %d bytes, %v", len(out), err)
	}
	k.waitGone("auto")

	k.create("auto2", k.keptSpec("auto2", map[string]string{AnnotationAutoremove: "true"}, "write", "10"))
	k.start("auto2")
	if got := k.readAll("auto2", "", false); string(got) != string(ctrPattern(10)) {
		k.t.Fatalf("output %q", got)
	}
	if _, ok := k.list()["auto2"]; !ok {
		k.t.Fatal("removed before it was waited for")
	}
	k.wait("auto2", "")
	k.readAll("auto2", "", true)
	k.waitGone("auto2")
}

// waitGone waits until the container is not listed (the test's deadline
// bounds it).
func (k *kept) waitGone(id string) {
	k.t.Helper()
	for {
		if _, ok := k.list()[id]; !ok {
			return
		}
		select {
		case <-k.ctx().Done():
			k.t.Fatalf("%s still listed", id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (k *kept) copyIn(id, p string, mode uint32, size int64, data []byte) (*containersv1.CopyInResponse, error) {
	stream, err := k.cs.CopyIn(k.ctx())
	if err != nil {
		return nil, err
	}
	stream.Send(&containersv1.CopyInRequest{Kind: &containersv1.CopyInRequest_Header{Header: &containersv1.CopyInHeader{ContainerId: id, Path: p, Mode: mode, Size: size}}})
	for len(data) > 0 {
		n := min(len(data), 100000)
		stream.Send(&containersv1.CopyInRequest{Kind: &containersv1.CopyInRequest_Data{Data: data[:n]}})
		data = data[n:]
	}
	return stream.CloseAndRecv()
}

func (k *kept) copyOut(id, p string) ([]byte, *containersv1.CopyOutHeader, error) {
	stream, err := k.cs.CopyOut(k.ctx(), &containersv1.CopyOutRequest{ContainerId: id, Path: p})
	if err != nil {
		return nil, nil, err
	}
	var h *containersv1.CopyOutHeader
	var b bytes.Buffer
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return b.Bytes(), h, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if m.GetHeader() != nil {
			h = m.GetHeader()
		}
		b.Write(m.GetData())
	}
}

// testCopy: a file copied into the container's /tmp (a tmpfs of its own
// mount namespace) is there for its processes, and comes back out whole,
// with its mode.
func (k *kept) testCopy() {
	k.run("cp", false, "sleep")
	k.readUntil("cp", "cp", "ready")
	data := bytes.Repeat([]byte("0123456789"), 300000)
	if resp, err := k.copyIn("cp", "/tmp/f", 0o750, int64(len(data)), data); err != nil || resp.GetWritten() != int64(len(data)) {
		k.t.Fatalf("CopyIn: %v, %v", resp, err)
	}
	got, h, err := k.copyOut("cp", "/tmp/f")
	if err != nil || !bytes.Equal(got, data) || h.GetSize() != int64(len(data)) || h.GetMode() != 0o750 {
		k.t.Fatalf("CopyOut: %d bytes, %v, %v", len(got), h, err)
	}
	// Through the container's eyes, not the agent's: the agent's /tmp
	// has no such file.
	if _, err := os.Stat("/tmp/f"); err == nil {
		k.t.Fatal("the file went to the agent's /tmp")
	}
	k.remove("cp")
}

// testCopyHostile: .., a symlink planted in the container pointing at the
// agent's files, a size that does not match, a root that is read-only, a
// directory, and a stopped container: each refused, nothing left behind.
func (k *kept) testCopyHostile() {
	k.run("hostile", false, "sleep")
	k.readUntil("hostile", "hostile", "ready")
	secret := filepath.Join(k.dir, "secret")
	if err := os.WriteFile(secret, []byte("agent's"), 0o600); err != nil {
		k.t.Fatal(err)
	}
	defer os.Remove(secret)
	pid := k.list()["hostile"].GetPid()
	ctrTmp := "/proc/" + strconv.Itoa(int(pid)) + "/root/tmp"
	if err := os.Symlink(k.dir, ctrTmp+"/esc"); err != nil {
		k.t.Fatal(err)
	}
	for _, p := range []string{"/tmp/esc/secret", "/../../../../" + secret, "/tmp/../../" + secret} {
		_, _, err := k.copyOut("hostile", p)
		wantCode(k.t, "CopyOut "+p, err, codes.NotFound, "")
	}
	_, err := k.copyIn("hostile", "/tmp/esc/planted", 0o644, 3, []byte("bad"))
	wantCode(k.t, "CopyIn through a symlink", err, codes.NotFound, "")
	if _, err := os.Stat(filepath.Join(k.dir, "planted")); err == nil {
		k.t.Fatal("CopyIn wrote through the symlink")
	}
	_, err = k.copyIn("hostile", "/tmp/short", 0o644, 10, []byte("abc"))
	wantCode(k.t, "CopyIn with too few bytes", err, codes.InvalidArgument, "size")
	_, err = k.copyIn("hostile", "/tmp/long", 0o644, 1, []byte("abc"))
	wantCode(k.t, "CopyIn with too many bytes", err, codes.InvalidArgument, "size")
	if entries, _ := os.ReadDir(ctrTmp); len(entries) != 1 {
		k.t.Errorf("left in the container's /tmp: %v", entries)
	}
	_, err = k.copyIn("hostile", "/prog", 0o644, 1, []byte("x"))
	wantCode(k.t, "CopyIn to a read-only root", err, codes.FailedPrecondition, "")
	_, _, err = k.copyOut("hostile", "/tmp")
	wantCode(k.t, "CopyOut of a directory", err, codes.FailedPrecondition, "")
	_, _, err = k.copyOut("hostile", "tmp/x")
	wantCode(k.t, "CopyOut of a relative path", err, codes.InvalidArgument, "path")
	_, _, err = k.copyOut("nobody", "/tmp/x")
	wantCode(k.t, "CopyOut of no container", err, codes.NotFound, "")
	if _, err := k.c.SignalProcess(k.ctx(), &pb.SignalProcessRequest{ContainerId: "hostile", Signal: 9}); err != nil {
		k.t.Fatal(err)
	}
	k.wait("hostile", "")
	_, _, err = k.copyOut("hostile", "/tmp/x")
	wantCode(k.t, "CopyOut of a stopped container", err, codes.FailedPrecondition, "")
	k.remove("hostile")
}
