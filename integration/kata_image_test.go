package integration

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// TestKataSeedClientImage is issue 17's end to end: a client that knows
// only the seed agent.proto's messages, through cabind's relay, runs a
// container from an imported image (the images share and an overlay, as
// storages), copies a file into it, reads its stats and metrics, lowers
// its memory limit and sees the OOM event when a process passes it.
func TestKataSeedClientImage(t *testing.T) {
	e := needEnv(t)
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	busyboxImageTar(t, tarPath)
	if res := cabinCLI(t, e, "image", "import", tarPath); res.code != 0 {
		t.Fatalf("cabin image import: %v", res)
	}
	plain := testContext(t, 3*time.Minute)
	details, err := cabinv1.NewOciImagesClient(e.cc).Inspect(plain, &cabinv1.InspectOciImageRequest{Reference: runImageRef})
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	digest := strings.TrimPrefix(details.GetImage().GetDigest(), "sha256:")
	ctx := toVM(plain, e.shared.name)

	agent := kata.NewAgentServiceClient(e.cc)
	const id = "it-seed-image"
	dir := "/run/kata-containers/it-seed-image"
	root := dir + "/rootfs"
	storages := []*kata.Storage{
		{Driver: "9p", Source: bootcfg.ImagesTag, Fstype: "9p", Options: []string{"trans=virtio", "ro", "nodev"}, MountPoint: "/run/kata-containers/images"},
		{Driver: "ephemeral", Fstype: "tmpfs", Source: "tmpfs", Options: []string{"nodev", "mode=0700", "size=16m"}, MountPoint: dir},
		{Driver: "local", Options: []string{"mode=0755"}, MountPoint: dir + "/upper"},
		{Driver: "local", Options: []string{"mode=0700"}, MountPoint: dir + "/work"},
		{Driver: "overlayfs", Fstype: "overlay", Source: "overlay", MountPoint: root, Options: []string{
			"lowerdir=/run/kata-containers/images/" + digest, "upperdir=" + dir + "/upper", "workdir=" + dir + "/work"}},
	}
	spec := kataSpec("sleep", "1000")
	spec.Root = &kata.Root{Path: root}
	if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: storages, OCI: spec}); err != nil {
		t.Fatalf("CreateContainer on the imported image: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		agent.RemoveContainer(toVM(ctx, e.shared.name), &kata.RemoveContainerRequest{ContainerId: id})
	})
	if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	exec := func(eid string, args ...string) (string, int32) {
		t.Helper()
		if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: &kata.Process{
			Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
		}}); err != nil {
			t.Fatalf("ExecProcess %v: %v", args, err)
		}
		out := readAll(t, agent, ctx, id, eid)
		w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: eid})
		if err != nil {
			t.Fatalf("WaitProcess %v: %v", args, err)
		}
		return out, w.GetStatus()
	}

	// The image's own file, as the image has it.
	if out, st := exec("cfg", "cat", "/etc/passwd"); st != 0 || !strings.Contains(out, "app:x:1000") {
		t.Errorf("the image's /etc/passwd in the container: %q, status %d", out, st)
	}

	// CopyFile into the container's root (a storage's mount point).
	data := []byte("copied from the host\n")
	if _, err := agent.CopyFile(ctx, &kata.CopyFileRequest{Path: root + "/etc/copied.txt", FileSize: int64(len(data)),
		FileMode: 0o644, DirMode: 0o755, Data: data}); err != nil {
		t.Fatalf("CopyFile: %v", err)
	}
	if out, st := exec("cat", "cat", "/etc/copied.txt"); st != 0 || out != string(data) {
		t.Errorf("the copied file in the container: %q, status %d", out, st)
	}

	// Stats and metrics.
	st, err := agent.StatsContainer(ctx, &kata.StatsContainerRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("StatsContainer: %v", err)
	}
	if mem := st.GetCgroupStats().GetMemoryStats().GetUsage(); mem.GetUsage() == 0 || mem.GetLimit() == 0 {
		t.Errorf("memory stats %v", mem)
	}
	m, err := agent.GetMetrics(ctx, &kata.GetMetricsRequest{})
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader([]byte(m.GetMetrics())))
	if err != nil || len(fams) == 0 {
		t.Fatalf("GetMetrics does not parse: %v", err)
	}
	if got := metricValue(fams, "kata_guest_meminfo", "item", "mem_total"); got <= 0 {
		t.Errorf("kata_guest_meminfo mem_total %v", got)
	}

	// A lower memory limit, then a process past it: the OOM event names
	// the container, and the process was killed by SIGKILL.
	if _, err := agent.UpdateContainer(ctx, &kata.UpdateContainerRequest{ContainerId: id,
		Resources: &kata.LinuxResources{Memory: &kata.LinuxMemory{Limit: 32 << 20}}}); err != nil {
		t.Fatalf("UpdateContainer: %v", err)
	}
	if limit := mustStatLimit(t, ctx, agent, id); limit != 32<<20 {
		t.Errorf("memory limit after UpdateContainer: %d, want %d", limit, 32<<20)
	}
	events := make(chan *kata.OOMEvent, 1)
	go func() {
		ev, err := agent.GetOOMEvent(ctx, &kata.GetOOMEventRequest{})
		if err != nil {
			t.Errorf("GetOOMEvent: %v", err)
		}
		events <- ev
	}()
	if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: "hog", Process: &kata.Process{
		Args: []string{"busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{},
	}}); err != nil {
		t.Fatalf("ExecProcess hog: %v", err)
	}
	readAll(t, agent, ctx, id, "hog")
	var trailer metadata.MD
	w, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: "hog"}, grpc.Trailer(&trailer))
	if sig := trailer.Get(kata.ExitSignalTrailer); err != nil || w.GetStatus() != 9 || len(sig) != 1 || sig[0] != "9" {
		t.Errorf("the process past the limit: %v, %v, trailer %v; want killed by signal 9 (exit 137)", w, err, trailer)
	}
	select {
	case ev := <-events:
		if ev.GetContainerId() != id {
			t.Errorf("OOM event %v, want %s", ev, id)
		}
	case <-ctx.Done():
		t.Fatal("no OOM event")
	}
}

// mustStatLimit is the container's memory limit as StatsContainer says.
func mustStatLimit(t *testing.T, ctx context.Context, agent kata.AgentServiceClient, id string) uint64 {
	t.Helper()
	st, err := agent.StatsContainer(ctx, &kata.StatsContainerRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("StatsContainer: %v", err)
	}
	return st.GetCgroupStats().GetMemoryStats().GetUsage().GetLimit()
}
