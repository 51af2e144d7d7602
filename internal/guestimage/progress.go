package guestimage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Progress is one report of a build: a step begun, or how far the step's
// download has come.
type Progress struct {
	// Step describes the current step, e.g. "downloading linux-image-… ".
	Step string
	// Done and Total count the bytes of the step's download: Total is the
	// package's size, 0 when it is not known or the step downloads nothing.
	Done, Total int64
}

// reporter logs a build's steps and passes them, and the byte counts of its
// downloads, to progress (which may be nil).
type reporter struct {
	log      *slog.Logger
	progress func(Progress)
	step     string
}

// Step begins step s.
func (r *reporter) Step(s string) {
	r.step = s
	r.log.Info(s)
	if r.progress != nil {
		r.progress(Progress{Step: s})
	}
}

// Bytes reports done of total bytes of the current step's download.
func (r *reporter) Bytes(done, total int64) {
	if r.progress != nil {
		r.progress(Progress{Step: r.step, Done: done, Total: total})
	}
}

// downloadPollInterval is how often a download's bytes are counted.
const downloadPollInterval = 250 * time.Millisecond

// pollDownload calls onBytes, on the caller's goroutine, with the bytes
// below dir every downloadPollInterval until done is closed. Counting the
// files wherever apt writes its partial download needs nothing of apt's
// progress protocol.
func pollDownload(dir string, total int64, done <-chan struct{}, onBytes func(done, total int64)) {
	t := time.NewTicker(downloadPollInterval)
	defer t.Stop()
	last := int64(-1)
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if n := treeBytes(dir); n != last {
				last = n
				onBytes(n, total)
			}
		}
	}
}

// treeBytes is the size of the regular files below dir, wherever apt puts
// its partial download.
func treeBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// runPolled is runWithTemp(cmd, tmpParent), reporting to onBytes (when not
// nil) the bytes cmd has written below dir as it runs.
func runPolled(cmd *exec.Cmd, tmpParent, dir string, total int64, onBytes func(done, total int64)) error {
	if onBytes == nil {
		return runWithTemp(cmd, tmpParent)
	}
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = runWithTemp(cmd, tmpParent)
	}()
	pollDownload(dir, total, done, onBytes)
	if err == nil {
		// The last count, once the download is whole.
		onBytes(treeBytes(dir), total)
	}
	return err
}

// aptDownloadSize is the size of p's .deb as apt's lists give it, from
// `apt-get download --print-uris`, which fetches nothing.
func aptDownloadSize(ctx context.Context, p pkgRef, tmpParent string) (int64, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "apt-get", "download", "--print-uris", "-q", "--", p.Name+"="+p.Version)
	cmd.Stdout, cmd.Stderr = &out, io.Discard
	if err := runWithTemp(cmd, tmpParent); err != nil {
		return 0, fmt.Errorf("size of %s: %w", p, err)
	}
	return parsePrintURIs(out.String())
}

// parsePrintURIs takes the size out of apt's --print-uris line for one
// package: 'URI' FILENAME SIZE HASH.
func parsePrintURIs(s string) (int64, error) {
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "'") {
			continue
		}
		end := strings.Index(line[1:], "'")
		if end < 0 {
			continue
		}
		fields := strings.Fields(line[end+2:])
		if len(fields) < 2 {
			continue
		}
		n, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("apt --print-uris: size %q: not a byte count", fields[1])
		}
		return n, nil
	}
	return 0, fmt.Errorf("apt --print-uris: no URI line in %q", s)
}
