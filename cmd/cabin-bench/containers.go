package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The container part: an exec of true into a running container, through
// cabind's relay, against the raw echo round trip; and a container's
// output to the host through ReadStdout and through cabin logs (the kept
// output), against raw virtio-serial throughput, all in one run.

const (
	ctrVM = "bench-ctr"
	// ctrExecs is how many execs of true are timed.
	ctrExecs = 30
	// stdoutBytes is what a container writes for the ReadStdout measure.
	stdoutBytes = 16 << 20
	// echoBytes is what the raw echo carries each way.
	echoBytes = 16 << 20
	// logsBytes is what a kept container writes: within the two log
	// files, so that all of it is read back.
	logsBytes = 1800 << 10
	// bigLogMax and bigLogBytes are a kept log of a container asking for
	// larger files (cabin run --log-max-size), all of it kept.
	bigLogMax   = 8 << 20
	bigLogBytes = 12 << 20
	ctrRounds   = 5
)

func benchContainers(ctx context.Context, e *env, o options, t *table) error {
	echo, err := rawEcho(ctx, e)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	defer echo.close()
	if _, err := startThroughDaemon(ctx, e.cc, ctrVM); err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: ctrVM})
	vctx := toVM(ctx, ctrVM)
	agent := kata.NewAgentServiceClient(e.cc)
	if err := runBenchContainer(vctx, agent, "bench-idle", nil, "sleep", "3600"); err != nil {
		return err
	}
	seq := 0
	execTrue := &rpcTarget{name: "exec true", call: func() error {
		seq++
		return execInContainer(vctx, agent, "bench-idle", "x"+strconv.Itoa(seq), "true")
	}}
	for range 3 {
		if err := execTrue.call(); err != nil {
			return fmt.Errorf("exec: %w", err)
		}
	}
	got, err := interleave(ctrExecs, echo, execTrue)
	if err != nil {
		return err
	}
	t.add(row{metric: "containers: exec of true into a running container (relayed)", value: median(got[1]),
		baseline: "raw 64-byte echo, same port", base: median(got[0]),
		detail: fmt.Sprintf("ExecProcess, output to its end, WaitProcess: %s", spread(got[1]))})

	var raw, stdout, logsRPC, logsCLI, logsBig, logsBefore []float64
	// Another cabin binary to time `cabin logs` with in the same run,
	// after this one each round (decisions §33: the CLI's fixed costs).
	before := os.Getenv(cabinBeforeEnv)
	for r := range ctrRounds {
		rate, err := echoThroughput(echo)
		if err != nil {
			return fmt.Errorf("echo throughput: %w", err)
		}
		raw = append(raw, rate)
		id := "bench-out" + strconv.Itoa(r)
		if rate, err = readStdoutThroughput(vctx, agent, id); err != nil {
			return fmt.Errorf("ReadStdout: %w", err)
		}
		stdout = append(stdout, rate)
		id = "bench-logs" + strconv.Itoa(r)
		// The other binary goes first in odd rounds, second in even.
		timeBefore := func() error {
			if before == "" {
				return nil
			}
			rate, err := keptLogsRate(vctx, e, agent, id+"b", before)
			if err != nil {
				return fmt.Errorf("logs with %s: %w", before, err)
			}
			logsBefore = append(logsBefore, rate)
			return nil
		}
		if r%2 == 1 {
			if err := timeBefore(); err != nil {
				return err
			}
		}
		rpcRate, cliRate, err := logsThroughput(vctx, e, o, agent, id)
		if err != nil {
			return fmt.Errorf("logs: %w", err)
		}
		logsRPC, logsCLI = append(logsRPC, rpcRate), append(logsCLI, cliRate)
		if r%2 == 0 {
			if err := timeBefore(); err != nil {
				return err
			}
		}
		if rate, err = bigLogsRate(vctx, e, agent, "bench-biglog"+strconv.Itoa(r), filepath.Join(o.bin, "cabin")); err != nil {
			return fmt.Errorf("logs of a larger log: %w", err)
		}
		logsBig = append(logsBig, rate)
	}
	base := medianRate(raw)
	t.add(row{metric: "containers: stdout guest→host through ReadStdout (relayed)", rate: medianRate(stdout),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%d MiB of a container's stdout (dd, 64 KiB writes), 32 KiB reads; echo: %d MiB each way at once; ReadStdout %s; echo %s",
			stdoutBytes>>20, echoBytes>>20, rateSpread(stdout), rateSpread(raw))})
	t.add(row{metric: "containers: kept output through Containers.Logs (relayed)", rate: medianRate(logsRPC),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%d KiB kept, read whole; %s", logsBytes>>10, rateSpread(logsRPC))})
	t.add(row{metric: "containers: kept output through `cabin logs`", rate: medianRate(logsCLI),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%d KiB kept (the agent keeps 1-2 MiB unless asked for more), the binary from its start to its exit, output to /dev/null: ~40 ms of it is the process and its call (decisions §33, §38): %s", logsBytes>>10, rateSpread(logsCLI))})
	t.add(row{metric: "containers: kept output through `cabin logs`, a container's larger log", rate: medianRate(logsBig),
		baseline: "raw virtio-serial echo", baseRate: base,
		detail: fmt.Sprintf("%d MiB kept (cabin run -d --log-max-size %dM: its files hold %d MiB each), read whole, as the row above: %s", bigLogBytes>>20, bigLogMax>>20, bigLogMax>>20, rateSpread(logsBig))})
	if before != "" {
		t.add(row{metric: "containers: kept output through `cabin logs` of $" + cabinBeforeEnv, rate: medianRate(logsBefore),
			baseline: "raw virtio-serial echo", baseRate: base,
			detail: fmt.Sprintf("%s, before or after the row above in turn: %s", before, rateSpread(logsBefore))})
	}
	return nil
}

// benchSpec is a container of the busybox root cabind shares, running
// argv, with annotations.
func benchSpec(annotations map[string]string, argv ...string) *kata.Spec {
	return &kata.Spec{
		Version:     "1.2.0",
		Process:     &kata.Process{Args: argv, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{}},
		Root:        &kata.Root{Path: "/run/bench-rootfs/" + bootcfg.RootfsBusybox, Readonly: true},
		Annotations: annotations,
		Mounts: []*kata.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Linux: &kata.Linux{Namespaces: []*kata.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "ipc"}, {Type: "uts"}}},
	}
}

func runBenchContainer(ctx context.Context, agent kata.AgentServiceClient, id string, annotations map[string]string, argv ...string) error {
	_, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{
		ContainerId: id,
		OCI:         benchSpec(annotations, argv...),
		Storages: []*kata.Storage{{Driver: "9p", Source: bootcfg.RootfsTag, Fstype: "9p",
			Options: []string{"trans=virtio", "version=9p2000.L", "ro"}, MountPoint: "/run/bench-rootfs"}},
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	return nil
}

// execInContainer runs argv in the container as cabin exec does: exec,
// its output read to the end, its exit waited for.
func execInContainer(ctx context.Context, agent kata.AgentServiceClient, id, eid string, argv ...string) error {
	proc := &kata.Process{Args: argv, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{}}
	if _, err := agent.ExecProcess(ctx, &kata.ExecProcessRequest{ContainerId: id, ExecId: eid, Process: proc}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, read := range []func(context.Context, *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error){
		func(ctx context.Context, r *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
			return agent.ReadStdout(ctx, r)
		},
		func(ctx context.Context, r *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
			return agent.ReadStderr(ctx, r)
		},
	} {
		wg.Go(func() {
			_, err := drainOutput(ctx, read, id, eid)
			errs <- err
		})
	}
	resp, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: eid})
	wg.Wait()
	close(errs)
	for e := range errs {
		err = errors.Join(err, e)
	}
	if err == nil && resp.GetStatus() != 0 {
		err = fmt.Errorf("%v exited %d", argv, resp.GetStatus())
	}
	return err
}

// drainOutput reads a process's output until its end, counting it.
func drainOutput(ctx context.Context, read func(context.Context, *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error), id, eid string) (int64, error) {
	var n int64
	req := &kata.ReadStreamRequest{ContainerId: id, ExecId: eid, Len: 32 << 10}
	for {
		resp, err := read(ctx, req)
		if err != nil {
			return n, err
		}
		if len(resp.GetData()) == 0 {
			return n, nil
		}
		n += int64(len(resp.GetData()))
	}
}

// echoThroughput streams echoBytes through the raw echo VM, writing and
// reading at once: its rate in bytes a second, each way.
func echoThroughput(echo *rpcTarget) (float64, error) {
	conn := echo.conn
	buf := make([]byte, 64<<10)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		var err error
		for sent := 0; sent < echoBytes && err == nil; sent += len(chunk) {
			_, err = conn.Write(chunk)
		}
		errc <- err
	}()
	for got := 0; got < echoBytes; {
		n, err := conn.Read(buf)
		if err != nil {
			return 0, err
		}
		got += n
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	return echoBytes / time.Since(start).Seconds(), nil
}

// readStdoutThroughput runs a container writing stdoutBytes and reads it
// all through ReadStdout. The writer is dd in 64 KiB blocks: busybox's
// head -c copies a byte at a time through stdio, and under TCG writes
// only ~7.6 MB/s with a vCPU to itself (decisions §31), which is what the
// measure then measured.
func readStdoutThroughput(ctx context.Context, agent kata.AgentServiceClient, id string) (float64, error) {
	if err := runBenchContainer(ctx, agent, id, nil, "dd", "if=/dev/zero", "bs=65536", "count="+strconv.Itoa(stdoutBytes/65536)); err != nil {
		return 0, err
	}
	defer agent.RemoveContainer(context.WithoutCancel(ctx), &kata.RemoveContainerRequest{ContainerId: id})
	start := time.Now()
	n, err := drainOutput(ctx, func(ctx context.Context, r *kata.ReadStreamRequest) (*kata.ReadStreamResponse, error) {
		return agent.ReadStdout(ctx, r)
	}, id, "")
	if err != nil {
		return 0, err
	}
	if n != stdoutBytes {
		return 0, fmt.Errorf("read %d bytes of %d", n, stdoutBytes)
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// logsThroughput runs a container whose output is kept, waits for its
// end, and reads the kept output through Containers.Logs, and then
// through the cabin binary.
func logsThroughput(ctx context.Context, e *env, o options, agent kata.AgentServiceClient, id string) (rpcRate, cliRate float64, err error) {
	ann := map[string]string{"io.cabinvm.logs": "keep"}
	if err := runBenchContainer(ctx, agent, id, ann, "head", "-c", strconv.Itoa(logsBytes), "/dev/zero"); err != nil {
		return 0, 0, err
	}
	defer agent.RemoveContainer(context.WithoutCancel(ctx), &kata.RemoveContainerRequest{ContainerId: id})
	if _, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}); err != nil {
		return 0, 0, err
	}
	cs := containersv1.NewContainersClient(e.cc)
	start := time.Now()
	stream, err := cs.Logs(ctx, &containersv1.ContainerLogsRequest{ContainerId: id, Follow: true})
	if err != nil {
		return 0, 0, err
	}
	var n int64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, 0, err
		}
		n += int64(len(m.GetData()))
	}
	if n != logsBytes {
		return 0, 0, fmt.Errorf("logs gave %d bytes of %d", n, logsBytes)
	}
	rpcRate = float64(n) / time.Since(start).Seconds()

	cliRate, err = cabinLogsRate(ctx, e, filepath.Join(o.bin, "cabin"), id)
	return rpcRate, cliRate, err
}

// cabinLogsRate runs `cabin logs --vm` of container id with the cabin
// binary at bin, output to /dev/null, and returns its rate from the
// binary's start to its exit.
func cabinLogsRate(ctx context.Context, e *env, bin, id string) (float64, error) {
	return cabinLogsRateOf(ctx, e, bin, id, logsBytes)
}

// cabinLogsRateOf is cabinLogsRate of a log of size bytes.
func cabinLogsRateOf(ctx context.Context, e *env, bin, id string, size int) (float64, error) {
	cmd := exec.CommandContext(ctx, bin, "--socket", filepath.Join(e.dir, "cabind.sock"), "logs", "--vm", ctrVM, id)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	var errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = devnull, &errOut
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%s logs: %w: %s", bin, err, errOut.Bytes())
	}
	return float64(size) / time.Since(start).Seconds(), nil
}

// bigLogsRate runs a container whose output is kept in files of
// bigLogMax, writing bigLogBytes, waits for its end, and times `cabin
// logs` of it, all of it kept, with the cabin binary at bin.
func bigLogsRate(ctx context.Context, e *env, agent kata.AgentServiceClient, id, bin string) (float64, error) {
	ann := map[string]string{"io.cabinvm.logs": "keep", "io.cabinvm.logs.max-size": strconv.Itoa(bigLogMax)}
	if err := runBenchContainer(ctx, agent, id, ann, "dd", "if=/dev/zero", "bs=65536", "count="+strconv.Itoa(bigLogBytes/65536)); err != nil {
		return 0, err
	}
	defer agent.RemoveContainer(context.WithoutCancel(ctx), &kata.RemoveContainerRequest{ContainerId: id})
	if _, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}); err != nil {
		return 0, err
	}
	return cabinLogsRateOf(ctx, e, bin, id, bigLogBytes)
}

// cabinBeforeEnv names a cabin binary whose `cabin logs` the containers
// part also times, to compare two builds of the CLI in one run.
const cabinBeforeEnv = "CABIN_BENCH_CABIN_BEFORE"

// keptLogsRate runs a container whose output is kept, waits for its end,
// and times `cabin logs` of it with the cabin binary at bin.
func keptLogsRate(ctx context.Context, e *env, agent kata.AgentServiceClient, id, bin string) (float64, error) {
	ann := map[string]string{"io.cabinvm.logs": "keep"}
	if err := runBenchContainer(ctx, agent, id, ann, "head", "-c", strconv.Itoa(logsBytes), "/dev/zero"); err != nil {
		return 0, err
	}
	defer agent.RemoveContainer(context.WithoutCancel(ctx), &kata.RemoveContainerRequest{ContainerId: id})
	if _, err := agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id}); err != nil {
		return 0, err
	}
	return cabinLogsRate(ctx, e, bin, id)
}
