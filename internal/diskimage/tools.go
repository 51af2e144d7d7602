package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// run runs a tool and returns its standard output. Its error holds the
// tool's standard error. extra are files the tool inherits as fd 3 on.
// The tool is killed when ctx ends.
func (s *Store) run(ctx context.Context, extra []*os.File, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.ExtraFiles = extra
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", name, ErrCancelled)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if len(msg) > 512 {
			msg = msg[:512] + "..."
		}
		return stdout.Bytes(), &toolError{tool: name, err: err, msg: msg}
	}
	return stdout.Bytes(), nil
}

// toolError is a tool that failed, with what it said.
type toolError struct {
	tool string
	err  error
	msg  string
}

func (e *toolError) Error() string {
	if e.msg == "" {
		return e.tool + ": " + e.err.Error()
	}
	return e.tool + ": " + e.err.Error() + ": " + e.msg
}

func (e *toolError) Unwrap() error { return e.err }

// exitCode is the exit status of a tool that failed, -1 otherwise.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// imageInfo is what cabin reads of `qemu-img info --output=json`.
type imageInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	Format          string `json:"format"`
	ActualSize      int64  `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	DirtyFlag       bool   `json:"dirty-flag"`
	FormatSpecific  struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// info runs qemu-img info on path in format f, never letting it probe.
func (s *Store) info(ctx context.Context, extra []*os.File, path string, f Format) (imageInfo, error) {
	out, err := s.run(ctx, extra, s.tools.QemuImg, "info", "-f", f.String(), "--output=json", path)
	if err != nil {
		if errors.Is(err, ErrCancelled) {
			return imageInfo{}, err
		}
		return imageInfo{}, badImage("not a %s image: %v", f, err)
	}
	var in imageInfo
	if err := json.Unmarshal(out, &in); err != nil {
		return imageInfo{}, fmt.Errorf("qemu-img info: %w", err)
	}
	return in, nil
}

// validate checks the image at path (which r reads, for its header) as
// format f: a qcow2 must have no backing file and no data file, which
// the header tells before any tool opens the image, and must pass
// qemu-img check; every image must say it is f, and have a size that is
// a multiple of 512. It returns the image's virtual size.
func (s *Store) validate(ctx context.Context, r io.ReaderAt, extra []*os.File, path string, f Format, fileSize int64) (int64, error) {
	if f == FormatQcow2 {
		var hdr [qcow2HeaderLen]byte
		if _, err := r.ReadAt(hdr[:], 0); err != nil {
			return 0, badImage("not a qcow2 image: its header cannot be read (%d bytes)", fileSize)
		}
		if _, err := checkQcow2Header(hdr[:]); err != nil {
			return 0, err
		}
	} else if fileSize%512 != 0 {
		return 0, badImage("a raw image of %d bytes: not a multiple of 512", fileSize)
	}
	in, err := s.info(ctx, extra, path, f)
	if err != nil {
		return 0, err
	}
	switch {
	case in.Format != f.String():
		return 0, badImage("qemu-img reads it as %q, not %s", in.Format, f)
	case in.BackingFilename != "" || in.FullBacking != "":
		return 0, badImage("a qcow2 with a backing file")
	case in.FormatSpecific.Data.DataFile != "":
		return 0, badImage("a qcow2 with a data file")
	case in.FormatSpecific.Data.Corrupt:
		return 0, badImage("the qcow2 is marked corrupt")
	case in.VirtualSize <= 0 || in.VirtualSize%512 != 0:
		return 0, badImage("a virtual size of %d bytes", in.VirtualSize)
	}
	if f == FormatQcow2 {
		out, err := s.run(ctx, extra, s.tools.QemuImg, "check", "-f", "qcow2", "--output=json", path)
		// 3: leaked clusters only, which waste space but lose nothing.
		if err != nil && exitCode(err) != 3 {
			if errors.Is(err, ErrCancelled) {
				return 0, err
			}
			return 0, badImage("qemu-img check: %v %s", err, bytes.TrimSpace(out))
		}
		// A qcow2 cut short can pass check (its clusters are read only
		// when used): every cluster it maps must lie inside the file.
		var chk struct {
			ImageEndOffset int64 `json:"image-end-offset"`
		}
		if json.Unmarshal(out, &chk) == nil && chk.ImageEndOffset > fileSize {
			return 0, badImage("a qcow2 truncated: its clusters end at byte %d of a file of %d", chk.ImageEndOffset, fileSize)
		}
	}
	return in.VirtualSize, nil
}

// The qcow2 header, as far as cabin reads it (QEMU's docs/interop/qcow2.txt).
const (
	qcow2HeaderLen = 104
	qcow2Magic     = "QFI\xfb"
	// incompatible feature bit 2: an external data file.
	qcow2ExternalData = 1 << 2
)

// checkQcow2Header refuses a qcow2 header that is not one, or that names
// a backing file or an external data file, and returns the virtual size.
func checkQcow2Header(h []byte) (int64, error) {
	if len(h) < 72 || string(h[:4]) != qcow2Magic {
		return 0, badImage("not a qcow2 image (no qcow2 magic)")
	}
	version := binary.BigEndian.Uint32(h[4:8])
	if version != 2 && version != 3 {
		return 0, badImage("qcow2 version %d", version)
	}
	if off := binary.BigEndian.Uint64(h[8:16]); off != 0 || binary.BigEndian.Uint32(h[16:20]) != 0 {
		return 0, badImage("a qcow2 with a backing file")
	}
	if version == 3 {
		if len(h) < qcow2HeaderLen {
			return 0, badImage("a qcow2 header cut short")
		}
		if binary.BigEndian.Uint64(h[72:80])&qcow2ExternalData != 0 {
			return 0, badImage("a qcow2 with a data file")
		}
	}
	size := binary.BigEndian.Uint64(h[24:32])
	if size == 0 || size > maxSize {
		return 0, badImage("a qcow2 of virtual size %d", size)
	}
	return int64(size), nil
}

// maxSize bounds image sizes: 1 PiB, far below what overflows anything.
const maxSize = 1 << 50

// virtualSize is the size of an image cabin keeps: a raw file's length, a
// qcow2's header field.
func virtualSize(path string, f Format) (int64, error) {
	file, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer file.Close()
	if f == FormatRaw {
		st, err := file.Stat()
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	var hdr [qcow2HeaderLen]byte
	if _, err := file.ReadAt(hdr[:], 0); err != nil {
		return 0, err
	}
	return checkQcow2Header(hdr[:])
}

// parseInt reads the integer after prefix in a tool's output line.
func parseInt(out []byte, prefix string) (int64, bool) {
	for line := range strings.SplitSeq(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
