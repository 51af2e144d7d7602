package consolelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// DefaultPoll is how often a following Reader at the end of the log looks
// for more. A console is read by people and by tests waiting for a line: a
// quarter of a second is soon enough for both, and a look costs one stat
// (a few more after a rotation). inotify would wake the reader sooner, but
// each follower would hold an inotify instance, of which a user (cabind
// runs as root, as do systemd and udev) has 128 by default: clients
// following logs could exhaust them for the whole host.
const DefaultPoll = 250 * time.Millisecond

// ErrFellBehind is a follower that the log's rotation overtook: the file
// after the last one it had found was removed before it could open it, so
// output was lost. It is in the category errdefs.ErrResourceExhausted.
var ErrFellBehind = errdefs.Errorf(errdefs.ErrResourceExhausted,
	"the console log was rotated away faster than it was read; some output was lost: read again")

// ReadOptions say where a Reader starts and whether it follows the log.
type ReadOptions struct {
	// TailLines, when 0 or more, starts the reader at the last TailLines
	// lines of the log as it is when the reader opens (a last line
	// without its newline counts as one); when negative, at the oldest
	// byte kept.
	TailLines int
	// Follow makes Read wait at the end of the log for more output,
	// across rotations, instead of returning io.EOF.
	Follow bool
	// Ended, when closed, tells a follower that nothing more will be
	// written: Read then returns what was written up to then, and
	// io.EOF. A nil channel never closes.
	Ended <-chan struct{}
	// Poll is how often a follower at the end of the log looks for more;
	// DefaultPoll when zero.
	Poll time.Duration
}

// Reader reads a console log across its rotated files, oldest first,
// from where ReadOptions say, and, following, on into what is written
// later. It holds open every file it has yet to read, from the one it
// reads to the newest it has seen, so that a rotation can neither take
// one away nor make it read one twice: a file is known by its inode, not
// its name, and files only ever move from newer names to older ones. A
// Reader is for one goroutine.
type Reader struct {
	files Files
	opts  ReadOptions
	// chain is the files still to read, oldest first; chain[0] is being
	// read, at off. The last one is the newest found so far.
	chain []segment
	off   int64
	// live is the live file as the last look found it; nil when missing.
	live os.FileInfo
	// ending is set once Ended closed: the next end of the log is the end.
	ending bool
}

// segment is one file of the log, held open.
type segment struct {
	f    *os.File
	info os.FileInfo // at open: its identity and size then
}

// OpenReader opens the log that files names, for reading as opts say.
func OpenReader(files Files, opts ReadOptions) (*Reader, error) {
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	segs, live, err := snapshot(files)
	if err != nil {
		return nil, err
	}
	r := &Reader{files: files, opts: opts, live: live}
	if opts.TailLines >= 0 && len(segs) > 0 {
		i, off, err := tailStart(segs, opts.TailLines)
		if err != nil {
			closeAll(segs)
			return nil, err
		}
		closeAll(segs[:i])
		segs, r.off = segs[i:], off
	}
	r.chain = segs
	return r, nil
}

// Read reads up to len(p) bytes of the log, never from two files at once.
// At the end of the log it returns io.EOF, or, following, waits for more
// until ctx ends (returning its error) or Ended closes.
func (r *Reader) Read(ctx context.Context, p []byte) (int, error) {
	for {
		if r.opts.Follow {
			if err := r.refresh(); err != nil {
				return 0, err
			}
		}
		if len(r.chain) > 0 {
			seg := r.chain[0]
			n, err := seg.f.ReadAt(p, r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("consolelog: %w", err)
			}
			if len(r.chain) > 1 {
				// A newer file was found before this read: this one
				// was rotated, and so closed by its writer, before it
				// got to its end.
				seg.f.Close()
				r.chain = r.chain[1:]
				r.off = 0
				continue
			}
			if r.files.Keep == 0 && r.opts.Follow {
				// Without rotated files the live one is cut back to
				// empty in place when full: start it again.
				if st, err := seg.f.Stat(); err == nil && st.Size() < r.off {
					r.off = 0
					continue
				}
			}
		}
		if !r.opts.Follow || r.ending {
			return 0, io.EOF
		}
		if err := r.wait(ctx); err != nil {
			return 0, err
		}
	}
}

// wait waits a poll interval, or until Ended closes (which it notes).
func (r *Reader) wait(ctx context.Context) error {
	select {
	case <-r.opts.Ended:
		r.ending = true
		return nil
	default:
	}
	t := time.NewTimer(r.opts.Poll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.opts.Ended:
		// Everything written is on disk now: one more look, then the
		// end of what there is is the end.
		r.ending = true
	case <-t.C:
	}
	return nil
}

// refresh adds to the chain the files rotated in since the last look. It
// costs a stat when the live file is still the one last seen.
func (r *Reader) refresh() error {
	live, err := os.Stat(r.files.Live)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("consolelog: %w", err)
	}
	if err != nil {
		live = nil
	}
	if sameFile(live, r.live) {
		return nil
	}
	segs, live, err := snapshot(r.files)
	if err != nil {
		return err
	}
	r.live = live
	if len(r.chain) == 0 {
		r.chain, r.off = segs, 0
		return nil
	}
	last := r.chain[len(r.chain)-1].info
	for i, s := range segs {
		if os.SameFile(s.info, last) {
			closeAll(segs[:i+1])
			r.chain = append(r.chain, segs[i+1:]...)
			return nil
		}
	}
	// The newest file this reader had found is gone: rotated out
	// (or removed) before it saw what came after it.
	closeAll(segs)
	return ErrFellBehind
}

// Close closes the files the reader holds.
func (r *Reader) Close() error {
	closeAll(r.chain)
	r.chain = nil
	return nil
}

// snapshot opens the log's files, oldest first, with the live file's
// info (nil when there is none). It opens them newest first: a rotation
// moves each file to the next older name, oldest first, so a scan the
// same way sees every file at least once and in order, and one that is
// seen twice is the same inode. That holds while no rotation gets as far
// as moving the newest rotated file or the live one: the scan is made
// again when either name holds another file at its end than at its start
// (both are held open meanwhile, so that neither inode can be reused by
// a file created during the scan).
func snapshot(files Files) ([]segment, os.FileInfo, error) {
	names := []string{files.Live}
	for n := 1; n <= files.Keep; n++ {
		names = append(names, files.Rotated(n))
	}
	// The names whose files must stay the same through a scan.
	watched := names[:min(len(names), 2)]
	for range 100 {
		var before []segment
		ok := true
		for _, name := range watched {
			s, err := openSegment(name)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				closeAll(before)
				return nil, nil, err
			}
			before = append(before, s) // s.f is nil when missing
		}
		var segs []segment // newest first
		for _, name := range names {
			s, err := openSegment(name)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				closeAll(before)
				closeAll(segs)
				return nil, nil, err
			}
			if len(segs) > 0 && os.SameFile(segs[len(segs)-1].info, s.info) {
				s.f.Close()
				continue
			}
			segs = append(segs, s)
		}
		for i, name := range watched {
			after, err := statMaybe(name)
			if err != nil {
				closeAll(before)
				closeAll(segs)
				return nil, nil, err
			}
			ok = ok && sameFile(before[i].info, after)
		}
		live := before[0].info
		closeAll(before)
		if ok {
			for i, j := 0, len(segs)-1; i < j; i, j = i+1, j-1 {
				segs[i], segs[j] = segs[j], segs[i]
			}
			return segs, live, nil
		}
		closeAll(segs)
		time.Sleep(time.Millisecond)
	}
	return nil, nil, errors.New("consolelog: the log rotated during every attempt to read it")
}

func openSegment(name string) (segment, error) {
	f, err := os.Open(name)
	if err != nil {
		return segment{}, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return segment{}, fmt.Errorf("consolelog: %w", err)
	}
	return segment{f: f, info: info}, nil
}

// statMaybe is os.Stat with nil, not an error, for a missing file.
func statMaybe(name string) (os.FileInfo, error) {
	st, err := os.Stat(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("consolelog: %w", err)
	}
	return st, nil
}

// sameFile is os.SameFile that takes nil for a missing file.
func sameFile(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b)
}

func closeAll(segs []segment) {
	for _, s := range segs {
		if s.f != nil {
			s.f.Close()
		}
	}
}

// tailStart finds where the last n lines of segs begin: the index of the
// file and the offset in it. The log's final newline ends its last line
// rather than starting another.
func tailStart(segs []segment, n int) (int, int64, error) {
	last := len(segs) - 1
	if n == 0 {
		return last, segs[last].info.Size(), nil
	}
	buf := make([]byte, 32<<10)
	first := true
	for i := last; i >= 0; i-- {
		end := segs[i].info.Size()
		for end > 0 {
			start := max(end-int64(len(buf)), 0)
			b := buf[:end-start]
			if _, err := segs[i].f.ReadAt(b, start); err != nil {
				return 0, 0, fmt.Errorf("consolelog: %w", err)
			}
			for j := len(b) - 1; j >= 0; j-- {
				if b[j] != '\n' {
					first = false
					continue
				}
				if first {
					first = false
					continue
				}
				if n--; n == 0 {
					return i, start + int64(j) + 1, nil
				}
			}
			end = start
		}
	}
	return 0, 0, nil
}

// Tail returns the newest maxBytes of the log, its rotated files oldest
// first then the live one, and the size of all of it.
func Tail(files Files, maxBytes int64) ([]byte, int64, error) {
	segs, _, err := snapshot(files)
	if err != nil {
		return nil, 0, err
	}
	defer closeAll(segs)
	var total int64
	for _, s := range segs {
		total += s.info.Size()
	}
	skip := max(total-maxBytes, 0)
	out := make([]byte, 0, total-skip)
	for _, s := range segs {
		size := s.info.Size()
		if skip >= size {
			skip -= size
			continue
		}
		b := make([]byte, size-skip)
		// Short only if the file was cut back since (no rotated files):
		// keep what there is.
		n, err := s.f.ReadAt(b, skip)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, fmt.Errorf("consolelog: %w", err)
		}
		out = append(out, b[:n]...)
		skip = 0
	}
	return out, total, nil
}
