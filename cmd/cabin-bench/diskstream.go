package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/cabinvm/cabin/internal/diskimage"
)

// The streamed export measurements (h14), on cabind's disk image code in
// this process, on a state dir of its own:
//   - a streamed export (diskimage.Store.Export, what cabin.v1.Disks.Export
//     runs, each sink call made through the guard that lets a cancel end it)
//     of a 1 GiB raw image holding 256 MiB of data into a sink that drops
//     it, against reading the same data regions in 1 MiB reads (page cache
//     warm), taking turns, medians of diskStreamRounds;
//   - how long CancelDiskImageOperation's Op.Cancel takes on a streamed
//     export whose receiver stopped taking data (its write blocked), against
//     one whose receiver takes it.
const (
	diskStreamRounds = 5
	diskStreamSize   = 1 << 30
	diskStreamData   = 256 << 20
)

func benchDiskStream(ctx context.Context, t *table) error {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return fmt.Errorf("needs qemu-img (Debian: qemu-utils): %w", err)
	}
	b, err := newDiskFixture(ctx, "cabin-bench-diskstream", diskStreamSize, diskStreamData)
	if err != nil {
		return err
	}
	defer b.close()
	s, key, res := b.s, b.key, b.res
	var export, read []time.Duration
	for range diskStreamRounds {
		d, err := timed(func() error {
			_, err := s.Export(ctx, diskimage.ExportRequest{Key: key}, discardSink{}, nil)
			return err
		})
		if err != nil {
			return fmt.Errorf("streamed export: %w", err)
		}
		export = append(export, d)
		d, err = timed(func() error { return readData(res.Path, diskStreamSize, diskStreamData, 4) })
		if err != nil {
			return err
		}
		read = append(read, d)
	}
	got, base := median(export), median(read)
	rate := func(d time.Duration) float64 { return float64(diskStreamData) / d.Seconds() }
	t.add(row{
		metric: "disk export streamed: 1 GiB raw, 256 MiB data", rate: rate(got), baseline: "reading the data", baseRate: rate(base),
		detail: fmt.Sprintf("%s against reading the data in %s (medians of %d); rates are of the data",
			got.Round(time.Millisecond), base.Round(time.Millisecond), diskStreamRounds),
	})

	var blocked, flowing []time.Duration
	for range diskStreamRounds {
		d, err := cancelExport(ctx, s, key, true)
		if err != nil {
			return err
		}
		blocked = append(blocked, d)
		d, err = cancelExport(ctx, s, key, false)
		if err != nil {
			return err
		}
		flowing = append(flowing, d)
	}
	t.add(row{
		metric: "disk export cancel, receiver blocked", value: median(blocked), baseline: "receiver reading", base: median(flowing),
		detail: fmt.Sprintf("Op.Cancel until the export ended and freed the image (medians of %d)", diskStreamRounds),
	})
	return nil
}

// cancelExport starts a streamed export of key into a sink that blocks at
// its second chunk (or takes everything, slowly enough that the cancel
// comes first), cancels it once the sink got a chunk, and returns how long
// Cancel took.
func cancelExport(ctx context.Context, s *diskimage.Store, key diskimage.Key, block bool) (time.Duration, error) {
	sink := &gateSink{block: block, first: make(chan struct{}), release: make(chan struct{})}
	defer close(sink.release)
	ops := make(chan *diskimage.Op, 1)
	out := make(chan error, 1)
	go func() {
		_, err := s.Export(ctx, diskimage.ExportRequest{Key: key}, sink, func(o *diskimage.Op) { ops <- o })
		out <- err
	}()
	op := <-ops
	select {
	case <-sink.first:
	case err := <-out:
		return 0, fmt.Errorf("export ended before its first chunk: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	if err := op.Cancel(cctx); err != nil {
		return 0, fmt.Errorf("cancel: %w", err)
	}
	d := time.Since(start)
	<-out
	if s.Busy(key) {
		return 0, fmt.Errorf("image still held after the cancel")
	}
	return d, nil
}

type discardSink struct{}

func (discardSink) Begin(diskimage.Format, int64, int64) error { return nil }
func (discardSink) Write(diskimage.Chunk) error                { return nil }

// gateSink tells first at its first chunk; after it, it blocks until
// released (block) or takes each chunk after a millisecond.
type gateSink struct {
	block          bool
	n              int
	first, release chan struct{}
}

func (g *gateSink) Begin(diskimage.Format, int64, int64) error { return nil }

func (g *gateSink) Write(diskimage.Chunk) error {
	g.n++
	if g.n == 1 {
		close(g.first)
		return nil
	}
	if g.block {
		<-g.release
		return io.ErrClosedPipe
	}
	time.Sleep(time.Millisecond)
	return nil
}

// readData reads the data fillData wrote into the image at path.
func readData(path string, size, data int64, parts int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	per := data / int64(parts)
	for p := range int64(parts) {
		start := p * (size / int64(parts))
		for off := int64(0); off < per; off += int64(len(buf)) {
			n := min(int64(len(buf)), per-off)
			if _, err := f.ReadAt(buf[:n], start+off); err != nil {
				return err
			}
		}
	}
	return nil
}
