package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/statedir"
)

// The disk image measurements (issue 16), on cabind's disk image code
// (internal/diskimage, the --on-host path of cabin.v1.Disks) in this
// process, on a state dir of its own:
//   - export and import of a 2 GiB raw image holding 512 MiB of data,
//     against `qemu-img convert` of the same image in the same run, taking
//     turns, medians of diskRounds;
//   - the I/O an export of a 10 GiB sparse image holding 100 MiB costs, read
//     from this process's /proc/self/io (rchar, wchar: what it read and
//     wrote through system calls, page cache or not).
const (
	diskRounds    = 3
	diskSize      = 2 << 30
	diskData      = 512 << 20
	sparseSize    = 10 << 30
	sparseData    = 100 << 20
	diskIOAllowed = 110 << 20
)

func benchDisk(ctx context.Context, t *table) error {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return fmt.Errorf("needs qemu-img (Debian: qemu-utils): %w", err)
	}
	b, err := newDiskFixture(ctx, "cabin-bench-disk", diskSize, diskData)
	if err != nil {
		return err
	}
	defer b.close()
	dir, root, s, key, res := b.dir, b.root, b.s, b.key, b.res
	var export, exportBase, imp, impBase []time.Duration
	for i := range diskRounds {
		out := filepath.Join(dir, fmt.Sprintf("export-%d.img", i))
		d, err := timed(func() error { return waitOp(s.ExportToFile(ctx, diskimage.ExportRequest{Key: key}, nil, out)) })
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		export = append(export, d)
		base := filepath.Join(dir, fmt.Sprintf("convert-%d.img", i))
		d, err = timed(func() error { return qemuConvert(ctx, res.Path, base) })
		if err != nil {
			return err
		}
		exportBase = append(exportBase, d)
		os.Remove(base)

		name := diskimage.Key{Name: fmt.Sprintf("imported-%d", i)}
		d, err = timed(func() error {
			return waitOp(s.ImportFromFile(ctx, diskimage.ImportRequest{Key: name, Format: diskimage.FormatRaw}, nil, out))
		})
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		imp = append(imp, d)
		// The baseline writes into the same state dir's filesystem.
		base = filepath.Join(root.Dir(), fmt.Sprintf("convert-in-%d.img", i))
		d, err = timed(func() error { return qemuConvert(ctx, out, base) })
		if err != nil {
			return err
		}
		impBase = append(impBase, d)
		os.Remove(base)
		os.Remove(out)
		if _, err := s.Destroy(ctx, name); err != nil {
			return err
		}
	}
	rate := func(d time.Duration) float64 { return float64(diskData) / d.Seconds() }
	for _, m := range []struct {
		metric    string
		got, base []time.Duration
	}{
		{"disk export: 2 GiB raw, 512 MiB data", export, exportBase},
		{"disk import: 2 GiB raw, 512 MiB data", imp, impBase},
	} {
		got, base := median(m.got), median(m.base)
		t.add(row{
			metric: m.metric, rate: rate(got), baseline: "qemu-img convert", baseRate: rate(base),
			detail: fmt.Sprintf("%s against qemu-img convert's %s (medians of %d; goal ≥ 0.9×); rates are of the data",
				got.Round(time.Millisecond), base.Round(time.Millisecond), diskRounds),
		})
	}

	// A sparse export's I/O.
	sparse := diskimage.Key{Name: "sparse"}
	res, err = s.Create(ctx, diskimage.CreateRequest{Key: sparse, Format: diskimage.FormatRaw, Size: sparseSize, Allocation: diskimage.AllocSparse})
	if err != nil {
		return err
	}
	if err := fillData(res.Path, sparseSize, sparseData, 10); err != nil {
		return err
	}
	before, err := selfIO()
	if err != nil {
		return err
	}
	out := filepath.Join(dir, "sparse-export.img")
	d, err := timed(func() error { return waitOp(s.ExportToFile(ctx, diskimage.ExportRequest{Key: sparse}, nil, out)) })
	if err != nil {
		return fmt.Errorf("sparse export: %w", err)
	}
	after, err := selfIO()
	if err != nil {
		return err
	}
	read, written := after["rchar"]-before["rchar"], after["wchar"]-before["wchar"]
	t.add(row{metric: "disk export I/O read: 10 GiB sparse, 100 MiB data", bytes: read, limit: diskIOAllowed,
		detail: fmt.Sprintf("read %.1f MiB, wrote %.1f MiB (rchar, wchar of /proc/self/io) in %s",
			float64(read)/mib, float64(written)/mib, d.Round(time.Millisecond))})
	t.add(row{metric: "disk export I/O written: 10 GiB sparse, 100 MiB data", bytes: written, limit: diskIOAllowed})
	return nil
}

// fillData writes data bytes of random data into the image at path of
// size bytes, in parts spread evenly over it.
func fillData(path string, size, data int64, parts int) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	rand.Read(buf)
	per := data / int64(parts)
	for p := range int64(parts) {
		start := p * (size / int64(parts))
		for off := int64(0); off < per; off += int64(len(buf)) {
			n := min(int64(len(buf)), per-off)
			if _, err := f.WriteAt(buf[:n], start+off); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

func waitOp(op *diskimage.Op, err error) error {
	if err != nil {
		return err
	}
	<-op.Done()
	if p := op.Progress(); p.Status != diskimage.StatusCreated {
		return fmt.Errorf("operation ended %d: %s", p.Status, p.Reason)
	}
	return nil
}

func qemuConvert(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "raw", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img convert: %w: %s", err, out)
	}
	// As the export and import do before they report.
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// selfIO reads /proc/self/io.
func selfIO() (map[string]int64, error) {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// diskFixture is a disk store of the bench's own, in a directory under
// /var/tmp, holding one sparse raw image "bench" with data bytes of data.
type diskFixture struct {
	dir  string
	root statedir.Root
	s    *diskimage.Store
	key  diskimage.Key
	res  diskimage.CreateResult
}

func newDiskFixture(ctx context.Context, prefix string, size, data int64) (_ *diskFixture, err error) {
	b := &diskFixture{key: diskimage.Key{Name: "bench"}}
	if b.dir, err = os.MkdirTemp("/var/tmp", prefix); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.root, err = statedir.New(filepath.Join(b.dir, "state")); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.root.Dir(), 0o700); err != nil {
		return nil, err
	}
	if b.s, err = diskimage.New(diskimage.Options{Root: b.root}); err != nil {
		return nil, err
	}
	if err := b.s.Recover(); err != nil {
		return nil, err
	}
	if b.res, err = b.s.Create(ctx, diskimage.CreateRequest{Key: b.key, Format: diskimage.FormatRaw, Size: uint64(size), Allocation: diskimage.AllocSparse}); err != nil {
		return nil, err
	}
	return b, fillData(b.res.Path, size, data, 4)
}

func (b *diskFixture) close() {
	if b.s != nil {
		b.s.Close()
	}
	os.RemoveAll(b.dir)
}
