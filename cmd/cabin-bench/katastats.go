package main

import (
	"context"
	"fmt"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// benchKataStats times StatsContainer and GetMetrics through cabind's
// relay, against a relayed GetKernelVersion round trip to the same VM,
// taking turns: what a `cabin stats` refresh and a Prometheus scrape of
// the guest cost beyond the call itself; and the agent's RSS before the
// first GetMetrics and after them all.
func benchKataStats(ctx context.Context, e *env, calls int, t *table) error {
	if _, err := startThroughDaemon(ctx, e.cc, relayVM); err != nil {
		return err
	}
	route := func(ctx context.Context) context.Context { return toVM(ctx, relayVM) }
	kv, err := kernelVersionCall(ctx, vmtools.NewMaitredClient(e.cc), route)
	if err != nil {
		return err
	}
	agent := kata.NewAgentServiceClient(e.cc)
	const id = "bench-stats"
	spec := &kata.Spec{
		Version: "1.2.0",
		Process: &kata.Process{Args: []string{"sleep", "100000"}, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{}},
		Root:    &kata.Root{Path: "/run/kata-containers/rootfs/busybox", Readonly: true},
		Mounts: []*kata.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &kata.Linux{Namespaces: []*kata.LinuxNamespace{{Type: "pid"}, {Type: "mount"}}},
	}
	storage := &kata.Storage{Driver: "9p", Source: bootcfg.RootfsTag, Fstype: "9p",
		Options: []string{"trans=virtio", "ro"}, MountPoint: "/run/kata-containers/rootfs"}
	if _, err := agent.CreateContainer(route(ctx), &kata.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: spec, Storages: []*kata.Storage{storage}}); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer agent.RemoveContainer(route(context.WithoutCancel(ctx)), &kata.RemoveContainerRequest{ContainerId: id, Timeout: 10})
	if _, err := agent.StartContainer(route(ctx), &kata.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	// The agent before anything of the metrics ran, and after.
	rssBefore, err := agentRSS(ctx, e)
	if err != nil {
		return err
	}
	stats := &rpcTarget{name: "stats", call: func() error {
		_, err := agent.StatsContainer(route(ctx), &kata.StatsContainerRequest{ContainerId: id})
		return err
	}}
	var size int
	metrics := &rpcTarget{name: "metrics", call: func() error {
		m, err := agent.GetMetrics(route(ctx), &kata.GetMetricsRequest{})
		size = len(m.GetMetrics())
		return err
	}}
	for range warmup {
		if err := stats.call(); err != nil {
			return fmt.Errorf("stats: %w", err)
		}
		if err := metrics.call(); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	got, err := interleave(calls, &rpcTarget{name: "kernel version", call: kv}, stats, metrics)
	if err != nil {
		return err
	}
	rssAfter, err := agentRSS(ctx, e)
	if err != nil {
		return err
	}
	base := median(got[0])
	t.add(row{metric: "kata: StatsContainer through cabind's relay", value: median(got[1]),
		baseline: "relayed GetKernelVersion, same VM", base: base,
		detail: fmt.Sprintf("stats %s, GetKernelVersion %s", spread(got[1]), spread(got[0]))})
	t.add(row{metric: "kata: GetMetrics through cabind's relay", value: median(got[2]),
		baseline: "relayed GetKernelVersion, same VM", base: base,
		detail: fmt.Sprintf("metrics %s, %d bytes of text", spread(got[2]), size)})
	t.add(row{metric: "kata: agent RSS after the stats and metrics calls", bytes: rssAfter, limit: 12 * mib,
		detail: fmt.Sprintf("%.1f MiB before the first GetMetrics, with one container", float64(rssBefore)/mib)})
	return nil
}
