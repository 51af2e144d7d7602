package kata

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// A container created with io.cabinvm.logs=keep has its init's output
// drained by the agent as it comes, so the container never blocks on a
// full pipe, into a log in its bundle directory (the guest's tmpfs, not
// the agent's heap: the agent's memory budget is small). The log is two
// files: the current one and the one before it; when the current one
// would pass its bound (logFileMax, or AnnotationLogsMaxSize's) it
// becomes the old one, whose content is dropped. A container keeps
// between the bound and twice that of its latest output, and goes with
// the container.
//
// The log is a sequence of records, each one read from the container: a
// header (the time it was read, in Unix nanoseconds; the stream; the
// data's length) and the data. Timestamps per line are the time of the
// record a line starts in.

const (
	logFile    = "log"
	logFileOld = "log.1"
	// logFileMax bounds one log file unless the container says otherwise,
	// from minLogFileMax to maxLogFileMax: the log is in the guest's
	// memory (tmpfs).
	logFileMax    = 1 << 20
	minLogFileMax = 64 << 10
	maxLogFileMax = 64 << 20
	// recordHeader is a record's header: int64 time, uint8 stream, three
	// zero bytes, uint32 length, little-endian.
	recordHeader = 16
	// maxRecordData bounds a record's data: one read's worth.
	maxRecordData = maxRead
	// coalesceWindow and maxEntry bound what Logs sends as one entry.
	coalesceWindow = 10 * time.Millisecond
	maxEntry       = 32<<10 - 64
)

// logStream says which output a record came from.
type logStream uint8

const (
	streamStdout logStream = 1
	streamStderr logStream = 2
)

// LogEntry is some output of a container. Sandbox.Logs hands one to its
// send function, whose Data is valid until it returns.
type LogEntry struct {
	Stderr bool
	Time   time.Time
	Data   []byte
	// Dropped is how many bytes of output were not kept before Data.
	Dropped int64
}

// logKeeper writes a container's log and tells followers of new records.
type logKeeper struct {
	dir string
	max int64 // bounds one file

	mu sync.Mutex
	f  *os.File // the current file; nil once finished
	// gen counts the current file's predecessors; a reader's position
	// names the file by it.
	gen  uint64
	size int64 // of the current file
	// base and oldBase count the data bytes written before the current
	// and the old file's first record: a reader that falls behind learns
	// from them what it missed.
	base, oldBase int64
	written       int64 // data bytes written in all
	lost          int64 // data bytes the log could not take (a full tmpfs)
	// changed is closed, and replaced, at each record and at the end.
	changed chan struct{}
	done    bool
}

// newLogKeeper starts a log in dir whose files hold at most max bytes
// each.
func newLogKeeper(dir string, max int64) (*logKeeper, error) {
	f, err := os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	return &logKeeper{dir: dir, max: max, f: f, changed: make(chan struct{})}, nil
}

// drain reads one of the init's outputs into the log until it ends.
func (k *logKeeper) drain(out *outStream, st logStream) {
	for {
		c, err := out.take(context.Background(), maxRecordData)
		if err != nil || c.b == nil {
			return
		}
		// The record's header goes into the room before the bytes, so
		// the record is written from the buffer they were read into,
		// which is then reused (decisions §35).
		rec := c.b[c.off-recordHeader : c.end]
		putRecordHeader(rec, st, time.Now(), c.len())
		k.write(rec)
		c.release()
	}
}

// append writes one record, rotating first when it would not fit. Output
// the log cannot take is counted and dropped: the container must not
// block on its logs.
func (k *logKeeper) append(st logStream, t time.Time, data []byte) {
	rec := make([]byte, recordHeader+len(data))
	putRecordHeader(rec, st, t, len(data))
	copy(rec[recordHeader:], data)
	k.write(rec)
}

// putRecordHeader writes a record's header into rec's first recordHeader
// bytes.
func putRecordHeader(rec []byte, st logStream, t time.Time, n int) {
	binary.LittleEndian.PutUint64(rec, uint64(t.UnixNano()))
	rec[8] = byte(st)
	rec[9], rec[10], rec[11] = 0, 0, 0
	binary.LittleEndian.PutUint32(rec[12:], uint32(n))
}

// write writes rec, a whole record, to the log.
func (k *logKeeper) write(rec []byte) {
	data := rec[recordHeader:]
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.f == nil {
		return
	}
	if k.size > 0 && k.size+int64(len(rec)) > k.max {
		if err := k.rotate(); err != nil {
			k.lost += int64(len(data))
			return
		}
	}
	n, err := k.f.Write(rec)
	if err != nil {
		// A part written is cut off again, so the file stays whole records.
		if n > 0 {
			_ = k.f.Truncate(k.size)
		}
		k.lost += int64(len(data))
		return
	}
	k.size += int64(n)
	k.written += int64(len(data))
	close(k.changed)
	k.changed = make(chan struct{})
}

// rotate makes the current file the old one. Called with mu held.
func (k *logKeeper) rotate() error {
	if err := os.Rename(filepath.Join(k.dir, logFile), filepath.Join(k.dir, logFileOld)); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(k.dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	k.f.Close()
	k.f, k.gen, k.size = f, k.gen+1, 0
	k.oldBase, k.base = k.base, k.written
	return nil
}

// finish ends the log: the output has ended.
func (k *logKeeper) finish() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.f != nil {
		k.f.Close()
		k.f = nil
	}
	k.done = true
	close(k.changed)
	k.changed = make(chan struct{})
}

// logPos is a reader's place in the log: a file by its generation, an
// offset in it, and the data bytes the reader has been past.
type logPos struct {
	gen  uint64
	off  int64
	seen int64
}

// span is what a reader at pos reads next: records in f from pos.off to
// end. f is nil when there is nothing new: wait on changed, unless done.
type span struct {
	f       *os.File
	end     int64
	next    logPos // where the reader is after it
	dropped int64  // data bytes it missed before it
	changed <-chan struct{}
	done    bool
}

// next opens what a reader at pos reads next. The file is opened under
// the lock, so its name is the generation's; once open, a rotation does
// not change what it reads.
func (k *logKeeper) next(pos logPos) (span, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sp := span{changed: k.changed, done: k.done, next: pos}
	if k.gen > 0 && pos.gen+1 < k.gen {
		// Fell behind by more than a file: on from the old one.
		pos = logPos{gen: k.gen - 1, seen: k.oldBase}
		sp.dropped = max(k.oldBase-sp.next.seen, 0)
		sp.next = pos
	}
	name, end := logFile, k.size
	if pos.gen+1 == k.gen {
		st, err := os.Stat(filepath.Join(k.dir, logFileOld))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && k.done {
				// Removed with its container.
				sp.done = true
				return sp, nil
			}
			return sp, fmt.Errorf("log: %w", err)
		}
		name, end = logFileOld, st.Size()
		if pos.off >= end {
			// Read to its end: on to the current file.
			sp.next = logPos{gen: k.gen, seen: k.base}
			pos = sp.next
			name, end = logFile, k.size
		}
	}
	if pos.off >= end {
		sp.f = nil
		return sp, nil
	}
	f, err := os.Open(filepath.Join(k.dir, name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && k.done {
			// Removed with its container.
			sp.done = true
			return sp, nil
		}
		return sp, fmt.Errorf("log: %w", err)
	}
	sp.f, sp.end = f, end
	return sp, nil
}

// lostBytes is what the log could not take.
func (k *logKeeper) lostBytes() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lost
}

// record is one record of a log file.
type record struct {
	stream logStream
	time   time.Time
	data   []byte
}

// parseRecords parses whole records from b; rest is the length of an
// incomplete record at the end. A record that cannot be one (an unknown
// stream, a length past maxRecordData) is an error: the file is not a log.
func parseRecords(b []byte) (recs []record, rest int, err error) {
	for len(b) > 0 {
		if len(b) < recordHeader {
			return recs, len(b), nil
		}
		st := logStream(b[8])
		n := binary.LittleEndian.Uint32(b[12:])
		if st != streamStdout && st != streamStderr || b[9]|b[10]|b[11] != 0 || n > maxRecordData {
			return recs, 0, fmt.Errorf("log: a malformed record")
		}
		if uint64(len(b)-recordHeader) < uint64(n) {
			return recs, len(b), nil
		}
		recs = append(recs, record{
			stream: st,
			time:   time.Unix(0, int64(binary.LittleEndian.Uint64(b))),
			data:   b[recordHeader : recordHeader+int(n)],
		})
		b = b[recordHeader+int(n):]
	}
	return recs, 0, nil
}

// Logs sends a container's kept output to send: all of it (tail < 0), or
// its last tail lines; with follow, then what comes until its output
// ends, it is removed, or ctx ends.
func (s *Sandbox) Logs(ctx context.Context, id string, follow bool, tail int64, send func(LogEntry) error) error {
	if err := checkID("container_id", id); err != nil {
		return err
	}
	c, err := s.container(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	t := c.meta
	s.mu.Unlock()
	if t == nil || t.logs == nil {
		return fmt.Errorf("container %q does not keep its output (annotation %s=%s): %w",
			id, AnnotationLogs, LogsKeep, errdefs.ErrFailedPrecondition)
	}
	k := t.logs
	pos := k.oldest()
	// What went before the oldest file, and what a full tmpfs took.
	dropped := pos.seen + k.lostBytes()
	var last span
	if tail >= 0 {
		// The last lines are found reading all of it, a chunk at a
		// time, keeping what may hold them.
		recs, sp, err := k.tailRest(pos, tail)
		if err != nil {
			return err
		}
		var scratch []byte
		if err := coalesce(recs, &scratch, send); err != nil {
			return err
		}
		last, dropped = sp, 0
	} else if last, dropped, err = k.sendRest(pos, dropped, send); err != nil {
		return err
	}
	for follow && !last.done {
		select {
		case <-last.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
		if last, dropped, err = k.sendRest(last.next, dropped, send); err != nil {
			return err
		}
	}
	return nil
}

// coalesce sends records to send as entries: consecutive records of one
// stream read within coalesceWindow of the first go out as one entry, of
// at most maxEntry bytes, with the first's time. A message costs the
// agent about as much as its bytes under TCG (decisions §28): fewer,
// larger ones make the output reach the host several times faster, for
// timestamps that are coalesceWindow coarser at most.
//
// An entry's Data is valid until send returns: a record alone is sent as
// its own bytes, several are copied into *scratch, which the next entry
// reuses. A new buffer an entry was most of the agent's garbage while
// Logs sent, and its collection a quarter of the agent's time (§38).
func coalesce(recs []record, scratch *[]byte, send func(LogEntry) error) error {
	for len(recs) > 0 {
		first, size, n := recs[0], len(recs[0].data), 1
		for ; n < len(recs); n++ {
			r := recs[n]
			if r.stream != first.stream || r.time.Sub(first.time) >= coalesceWindow || size+len(r.data) > maxEntry {
				break
			}
			size += len(r.data)
		}
		data := first.data
		if n > 1 {
			data = (*scratch)[:0]
			for _, r := range recs[:n] {
				data = append(data, r.data...)
			}
			*scratch = data
		}
		if err := send(LogEntry{Stderr: first.stream == streamStderr, Time: first.time, Data: data}); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// oldest is the position of the oldest record kept.
func (k *logKeeper) oldest() logPos {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gen == 0 {
		return logPos{}
	}
	return logPos{gen: k.gen - 1, seen: k.oldBase}
}

// tailLines keeps the records holding the last n lines of the output,
// both streams counted together; a last line without its newline counts.
// The first record kept may be cut to where its line starts.
func tailLines(recs []record, n int64) []record {
	if n == 0 {
		return nil
	}
	count := int64(0)
	for i := len(recs) - 1; i >= 0; i-- {
		d := recs[i].data
		for j := len(d) - 1; j >= 0; j-- {
			if d[j] != '\n' || i == len(recs)-1 && j == len(d)-1 {
				continue
			}
			count++
			if count == n {
				out := append([]record(nil), recs[i:]...)
				out[0].data = d[j+1:]
				if len(out[0].data) == 0 {
					out = out[1:]
				}
				return out
			}
		}
	}
	return recs
}
