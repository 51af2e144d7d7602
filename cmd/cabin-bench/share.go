package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// The share measurement's sizes.
const (
	shareBytes  = 256 << 20
	shareRounds = 3
	shareVM     = "share0"
)

// benchShare measures reading a 256 MiB file in the guest from a host
// folder shared over virtio-9p (read-only, security_model=none, the
// guest's mount cache=none) against reading the same bytes from a
// virtio-blk disk: the file itself, attached read-only as a raw image.
// Each read starts with the guest's caches dropped; the host's page cache
// holds the file for both after the first read, so the two measure the
// transports, not the host's disk. They take turns, shareRounds each,
// timed from the exec's start to its exit (a few ms of exec against
// seconds of reading under TCG).
func benchShare(ctx context.Context, e *env, t *table) error {
	dir := filepath.Join(e.dir, "share")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	blob := filepath.Join(dir, "blob")
	if err := writeRandom(blob, shareBytes); err != nil {
		return err
	}
	if err := startWithStorage(ctx, e, &cabinv1.StartVmRequest{
		Request: &concierge.StartVmRequest{Name: shareVM, Cpus: benchCPUs, Disks: []*concierge.DiskImage{{
			Path: blob, ImageType: concierge.DiskImageType_DISK_IMAGE_RAW,
		}}},
		MemoryMib: benchMemoryMiB,
		Shares:    []*cabinv1.Share{{HostPath: dir, GuestPath: "/share", ReadOnly: true}},
	}); err != nil {
		return err
	}
	defer concierge.NewVmConciergeClient(e.cc).StopVm(ctx, &concierge.StopVmRequest{Name: shareVM})
	read := func(path string) (time.Duration, error) {
		start := time.Now()
		_, err := execIO(ctx, e.cc, shareVM, nil, "sh", "-c", `echo 3 > /proc/sys/vm/drop_caches && cat "$1" > /dev/null`, "sh", path)
		return time.Since(start), err
	}
	var p9, blk []time.Duration
	for i := 0; i < shareRounds; i++ {
		d, err := read("/share/blob")
		if err != nil {
			return fmt.Errorf("9p read: %w", err)
		}
		p9 = append(p9, d)
		if d, err = read("/dev/vda"); err != nil {
			return fmt.Errorf("virtio-blk read: %w", err)
		}
		blk = append(blk, d)
	}
	rate := func(d time.Duration) float64 { return shareBytes / d.Seconds() }
	t.add(row{
		metric:   "9p share read of 256 MiB in the guest",
		rate:     rate(median(p9)),
		baseline: "virtio-blk read of the same bytes",
		baseRate: rate(median(blk)),
		detail:   fmt.Sprintf("9p %s, virtio-blk %s", spread(p9), spread(blk)),
	})
	return nil
}

// writeRandom writes n random bytes to a new file at path.
func writeRandom(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for written := 0; written < n; written += len(buf) {
		rand.Read(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// startWithStorage starts req's VM through cabind and waits until it is
// up.
func startWithStorage(ctx context.Context, e *env, req *cabinv1.StartVmRequest) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := req.GetRequest().GetName()
	events, err := cabinv1.NewEventsClient(e.cc).Watch(wctx, &cabinv1.WatchRequest{VmName: name})
	if err != nil {
		return err
	}
	if _, err := events.Header(); err != nil {
		return err
	}
	resp, err := cabinv1.NewVmsClient(e.cc).StartVm(ctx, req)
	if err != nil {
		return err
	}
	if !resp.GetSuccess() {
		return errors.New(resp.GetFailureReason())
	}
	for {
		ev, err := events.Recv()
		if err != nil {
			return err
		}
		if ev.GetVmStarted() != nil {
			return nil
		}
		if ev.GetVmStopped() != nil {
			return fmt.Errorf("%s stopped while starting", name)
		}
	}
}
