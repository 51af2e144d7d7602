package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The cp part: cabin cp of a directory tree (the binary, as a user runs
// it: a tar stream through cabin.v1.Containers, staged and renamed into
// place) into a running container's tmpfs and back out, against the raw
// virtio-serial echo throughput of the same run.

const (
	cpVM     = "bench-cp"
	cpCtr    = "bench-cp"
	cpRounds = 5
	// The tree: one large file and many small ones.
	cpBig, cpSmall, cpSmallSize = 4 << 20, 256, 16 << 10
)

func benchCpDir(ctx context.Context, e *env, o options, t *table) error {
	cabin := filepath.Join(o.bin, "cabin")
	if _, err := os.Stat(cabin); err != nil {
		return fmt.Errorf("cabin not found beside cabin-bench (run make build): %w", err)
	}
	tree := filepath.Join(e.dir, "cptree")
	if err := writeCpTree(tree); err != nil {
		return err
	}
	size := int64(cpBig + cpSmall*cpSmallSize)
	echo, err := rawEcho(ctx, e)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	defer echo.close()
	if _, err := startThroughDaemon(ctx, e.cc, cpVM); err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: cpVM})
	vctx := toVM(ctx, cpVM)
	agent := kata.NewAgentServiceClient(e.cc)
	spec := benchSpec(nil, "sleep", "3600")
	spec.Mounts = append(spec.Mounts, &kata.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=256m"}})
	_, err = agent.CreateContainer(vctx, &kata.CreateContainerRequest{ContainerId: cpCtr, OCI: spec,
		Storages: []*kata.Storage{{Driver: "9p", Source: bootcfg.RootfsTag, Fstype: "9p",
			Options: []string{"trans=virtio", "version=9p2000.L", "ro"}, MountPoint: "/run/bench-rootfs"}}})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer agent.RemoveContainer(context.WithoutCancel(vctx), &kata.RemoveContainerRequest{ContainerId: cpCtr})
	if _, err := agent.StartContainer(vctx, &kata.StartContainerRequest{ContainerId: cpCtr}); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	cp := func(args ...string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, cabin, append([]string{"--socket", filepath.Join(e.dir, "cabind.sock"), "cp", "--vm", cpVM}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("cabin cp %v: %w: %s", args, err, out.Bytes())
		}
		return time.Since(start), nil
	}
	var raw, in, out []float64
	for r := range cpRounds {
		rate, err := echoThroughput(echo)
		if err != nil {
			return fmt.Errorf("echo throughput: %w", err)
		}
		raw = append(raw, rate)
		dst := "/tmp/in" + strconv.Itoa(r)
		d, err := cp(tree, cpCtr+":"+dst)
		if err != nil {
			return err
		}
		in = append(in, float64(size)/d.Seconds())
		local := filepath.Join(e.dir, "cpout"+strconv.Itoa(r))
		if d, err = cp(cpCtr+":"+dst, local); err != nil {
			return err
		}
		out = append(out, float64(size)/d.Seconds())
		os.RemoveAll(local)
		if err := execInContainer(vctx, agent, cpCtr, "rm"+strconv.Itoa(r), "rm", "-rf", dst); err != nil {
			return fmt.Errorf("rm: %w", err)
		}
	}
	base := medianRate(raw)
	what := fmt.Sprintf("%d MiB in %d files", size>>20, cpSmall+1)
	t.add(row{metric: "cp: a directory tree into a container (`cabin cp DIR CTR:/tmp/x`)", rate: medianRate(in),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%s, the binary from start to exit; %s; echo %s", what, rateSpread(in), rateSpread(raw))})
	t.add(row{metric: "cp: a directory tree out of a container (`cabin cp CTR:/tmp/x DIR`)", rate: medianRate(out),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%s; %s", what, rateSpread(out))})
	return nil
}

// writeCpTree writes the tree cp copies.
func writeCpTree(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "small"), 0o755); err != nil {
		return err
	}
	big := bytes.Repeat([]byte("cabin cp "), cpBig/9+1)[:cpBig]
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		return err
	}
	for i := range cpSmall {
		if err := os.WriteFile(filepath.Join(dir, "small", strconv.Itoa(i)), big[:cpSmallSize], 0o644); err != nil {
			return err
		}
	}
	return nil
}
