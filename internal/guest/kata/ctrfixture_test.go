package kata

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/container/runtimebuild"
)

// containerFixture builds what the root container suites run: the real
// cabin-runtime, and a root filesystem holding only testdata/ctrprog as
// /prog. It skips t when the runtime does not build.
func containerFixture(t *testing.T) (rtPath, rootfs string) {
	t.Helper()
	dir := t.TempDir()
	rtPath = filepath.Join(dir, "cabin-runtime")
	if out, err := goBuild(rtPath, "./cmd/cabin-runtime", true); err != nil {
		t.Skipf("cabin-runtime does not build (yet); the container tests need it: %v\n%s", err, out)
	}
	rootfs = filepath.Join(dir, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := goBuild(filepath.Join(rootfs, "prog"), "./internal/guest/kata/testdata/ctrprog", false); err != nil {
		t.Fatalf("build the container's program: %v\n%s", err, out)
	}
	return rtPath, rootfs
}

// goBuild builds pkg (relative to the module's root) into out: the
// runtime as the Makefile does (static, with cgo for libcontainer's
// nsenter), anything else static without cgo.
func goBuild(out, pkg string, cgo bool) ([]byte, error) {
	args := []string{"build", "-o", out}
	env := "CGO_ENABLED=0"
	if cgo {
		args = append(args, "-tags", runtimebuild.Tags, "-ldflags", runtimebuild.LDFlags)
		env = "CGO_ENABLED=1"
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = "../../.."
	cmd.Env = append(os.Environ(), env)
	return cmd.CombinedOutput()
}

// spec is a container running /prog with args.
func (h *ctr) spec(id string, terminal bool, args ...string) *pb.Spec {
	p := &pb.Process{Args: append([]string{"/prog"}, args...), Env: []string{"PATH=/"}, Cwd: "/", User: &pb.User{}, Terminal: terminal}
	if terminal {
		p.ConsoleSize = &pb.Box{Height: 24, Width: 80}
	}
	return &pb.Spec{
		Process:  p,
		Root:     &pb.Root{Path: h.rootfs, Readonly: true},
		Hostname: id,
		Mounts: []*pb.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev"}},
		},
		Linux: &pb.Linux{
			Namespaces:  []*pb.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			CgroupsPath: "/" + cgroupParent + "/" + id,
		},
	}
}

func (h *ctr) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

func (h *ctr) create(id string, spec *pb.Spec, storages ...*pb.Storage) {
	h.t.Helper()
	if _, err := h.c.CreateContainer(h.ctx(), &pb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec, Storages: storages}); err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
}

func (h *ctr) start(id string) {
	h.t.Helper()
	if _, err := h.c.StartContainer(h.ctx(), &pb.StartContainerRequest{ContainerId: id}); err != nil {
		h.t.Fatalf("start %s: %v", id, err)
	}
}

// run creates and starts a container.
func (h *ctr) run(id string, terminal bool, args ...string) {
	h.t.Helper()
	h.create(id, h.spec(id, terminal, args...))
	h.start(id)
}

func (h *ctr) exec(id, eid string, terminal bool, args ...string) {
	h.t.Helper()
	p := h.spec(id, terminal, args...).Process
	if _, err := h.c.ExecProcess(h.ctx(), &pb.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: p}); err != nil {
		h.t.Fatalf("exec %s in %s: %v", eid, id, err)
	}
}

// wait returns the process's status as a shell says it: 128+signal when
// the reply's trailer says a signal killed it (and then the status itself
// must be the signal's number, as Kata's agent reports it), else the status.
func (h *ctr) wait(id, eid string) int32 {
	h.t.Helper()
	var trailer metadata.MD
	resp, err := h.c.WaitProcess(h.ctx(), &pb.WaitProcessRequest{ContainerId: id, ExecId: eid}, grpc.Trailer(&trailer))
	if err != nil {
		h.t.Fatalf("wait %s/%s: %v", id, eid, err)
	}
	if v := trailer.Get(pb.ExitSignalTrailer); len(v) > 0 {
		sig, err := strconv.Atoi(v[0])
		if err != nil || resp.GetStatus() != int32(sig) {
			h.t.Errorf("wait %s/%s: status %d with trailer %s=%q; want the signal's number in both", id, eid, resp.GetStatus(), pb.ExitSignalTrailer, v)
		}
		return 128 + int32(sig)
	}
	return resp.GetStatus()
}

func (h *ctr) remove(id string) {
	h.t.Helper()
	if _, err := h.c.RemoveContainer(h.ctx(), &pb.RemoveContainerRequest{ContainerId: id, Timeout: 30}); err != nil {
		h.t.Fatalf("remove %s: %v", id, err)
	}
}

func (h *ctr) read(id, eid string, stderr bool) ([]byte, error) {
	req := &pb.ReadStreamRequest{ContainerId: id, ExecId: eid, Len: 32 << 10}
	var resp *pb.ReadStreamResponse
	var err error
	if stderr {
		resp, err = h.c.ReadStderr(h.ctx(), req)
	} else {
		resp, err = h.c.ReadStdout(h.ctx(), req)
	}
	return resp.GetData(), err
}

// readAll reads a stream until the empty read that ends it.
func (h *ctr) readAll(id, eid string, stderr bool) []byte {
	h.t.Helper()
	var out bytes.Buffer
	for {
		b, err := h.read(id, eid, stderr)
		if err != nil {
			h.t.Fatalf("read %s/%s after %d bytes: %v", id, eid, out.Len(), err)
		}
		if len(b) == 0 {
			return out.Bytes()
		}
		out.Write(b)
	}
}

// readUntil reads stdout until it has had want.
func (h *ctr) readUntil(id, eid, want string) string {
	h.t.Helper()
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		b, err := h.read(id, eid, false)
		if err != nil || len(b) == 0 {
			h.t.Fatalf("read %s/%s waiting for %q: %q so far, then %v", id, eid, want, out.String(), err)
		}
		out.Write(b)
	}
	return out.String()
}
