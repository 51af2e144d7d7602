package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
)

const (
	// copyVM is the VM the CopyFile measurement copies into.
	copyVM = "bench-copy"
	// copyBytes is the size of each file copied, in chunks of 1 MiB as
	// Kata's runtime sends them, and of 128 KiB.
	copyBytes = 16 << 20
	// copyRounds is how many files are copied, each beside an echo.
	copyRounds = 5
)

// benchCopyFile times CopyFile host→guest through cabind's relay, a file
// in 1 MiB chunks into upstream's shared directory (the guest's /run, in
// memory), against the raw channel's echo throughput in the same run,
// taking turns.
func benchCopyFile(ctx context.Context, e *env, t *table) error {
	echo, err := rawEcho(ctx, e)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	defer echo.close()
	if _, err := startThroughDaemon(ctx, e.cc, copyVM); err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(context.WithoutCancel(ctx), &concierge.StopVmRequest{Name: copyVM})
	vctx := toVM(ctx, copyVM)
	agent := kata.NewAgentServiceClient(e.cc)
	data := make([]byte, copyBytes)
	for i := range data {
		data[i] = byte(i * 7)
	}
	copyOnce := func(name string, chunk int) (float64, error) {
		start := time.Now()
		req := &kata.CopyFileRequest{Path: "/run/kata-containers/shared/containers/" + name, FileSize: copyBytes, FileMode: 0o644, DirMode: 0o755}
		for off := 0; off < copyBytes; off += chunk {
			req.Offset, req.Data = int64(off), data[off:off+chunk]
			if _, err := agent.CopyFile(vctx, req); err != nil {
				return 0, err
			}
		}
		return copyBytes / time.Since(start).Seconds(), nil
	}
	if _, err := copyOnce("warmup", 1<<20); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	var raw, copies, small []float64
	for range copyRounds {
		rate, err := echoThroughput(echo)
		if err != nil {
			return fmt.Errorf("echo throughput: %w", err)
		}
		raw = append(raw, rate)
		// The same name each time: each copy replaces the last.
		if rate, err = copyOnce("f", 1<<20); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		copies = append(copies, rate)
		if rate, err = copyOnce("f", 128<<10); err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		small = append(small, rate)
	}
	t.add(row{metric: "kata: CopyFile host→guest (relayed, 1 MiB chunks)", rate: medianRate(copies),
		baseline: "raw virtio-serial echo", baseRate: medianRate(raw),
		detail: fmt.Sprintf("%d MiB files into the guest's memory; CopyFile %s; echo %s", copyBytes>>20, rateSpread(copies), rateSpread(raw))})
	t.add(row{metric: "kata: CopyFile host→guest (relayed, 128 KiB chunks)", rate: medianRate(small),
		baseline: "raw virtio-serial echo", baseRate: medianRate(raw),
		detail: fmt.Sprintf("the same files; %s", rateSpread(small))})
	return nil
}
