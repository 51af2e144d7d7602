// Package consolelog keeps a VM's console output on disk: a live log capped
// in size and rotated into a fixed number of older files, so a chatty or
// hostile guest cannot fill the host's disk. As a per-VM resource
// (Resource) it gives each VM its serial console and copies what the guest
// writes there into that log. It reads the log back across its files:
// the newest part (Tail), or from its start or its last lines on,
// following it as it grows and rotates (Reader).
package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Files names the live log and its rotations.
type Files struct {
	// Live is the file being written.
	Live string
	// Rotated returns the n-th rotated file, 1 (newest) to Keep.
	Rotated func(n int) string
	// Keep is how many rotated files are kept.
	Keep int
}

// Writer appends to the live log and rotates it when it reaches MaxBytes.
// It is safe for concurrent use.
type Writer struct {
	files    Files
	maxBytes int64

	mu   sync.Mutex
	f    *os.File // nil after Close, or after a rotation that failed
	size int64
	// closed tells Close from a failed rotation, after which the next
	// Write reopens the live file rather than dropping output for good.
	closed bool
}

// Open opens (appending to) the live log.
func Open(files Files, maxBytes int64) (*Writer, error) {
	if maxBytes <= 0 {
		return nil, errors.New("consolelog: max size must be positive")
	}
	w := &Writer{files: files, maxBytes: maxBytes}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.files.Live, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("consolelog: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write appends p, rotating whenever the live file is full. A line is cut
// at a newline where one fits, so lines rarely straddle two files.
//
// A live file already over the cap (it was written under a larger one) is
// rotated before anything is added to it. If a rotation fails, Write
// returns the error and the next Write reopens the live file and rotates
// again, so a passing fault loses only the output written meanwhile.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	if w.f == nil {
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	written := 0
	for len(p) > 0 {
		n := len(p)
		if room := max(w.maxBytes-w.size, 0); int64(n) > room {
			n = int(room)
			if i := bytes.LastIndexByte(p[:n], '\n'); i >= 0 {
				n = i + 1
			} else if w.size > 0 {
				n = 0 // start the line in a fresh file
			}
		}
		if n > 0 {
			m, err := w.f.Write(p[:n])
			w.size += int64(m)
			written += m
			if err != nil {
				return written, fmt.Errorf("consolelog: %w", err)
			}
			p = p[n:]
		}
		if len(p) > 0 {
			if err := w.rotate(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// rotate leaves w.f nil if it fails; Write then retries on its next call.
func (w *Writer) rotate() error {
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	if w.files.Keep == 0 {
		if err := os.Truncate(w.files.Live, 0); err != nil {
			return fmt.Errorf("consolelog: %w", err)
		}
		return w.open()
	}
	os.Remove(w.files.Rotated(w.files.Keep))
	for n := w.files.Keep - 1; n >= 1; n-- {
		if err := os.Rename(w.files.Rotated(n), w.files.Rotated(n+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("consolelog: %w", err)
		}
	}
	if err := os.Rename(w.files.Live, w.files.Rotated(1)); err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	return w.open()
}

// Close closes the live file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Read returns the rotated logs, oldest first, then the live one, keeping at
// most the newest maxBytes of the whole.
func Read(files Files, maxBytes int64) ([]byte, error) {
	b, _, err := Tail(files, maxBytes)
	return b, err
}

// Note appends a line of cabind's own to the live log of files, beside
// the guest's output, so that `cabin vm logs` shows why a VM stopped. The
// line starts on a line of its own. O_APPEND keeps it whole against the
// console's copy, which writes to the same file.
func Note(files Files, line string) error {
	f, err := os.OpenFile(files.Live, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + strings.TrimRight(line, "\n") + "\n"); err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	return nil
}
