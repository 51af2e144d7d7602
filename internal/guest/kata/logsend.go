package kata

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// logChunk is how much of a log file Logs reads at a time: the entries it
// sends are built from one chunk, so at most this much of the log is in
// the agent's heap at once (with the entries gRPC is still sending).
// Reading the whole log first, then copying it into entries, took more
// than half the agent's time in its garbage collector, the heap up
// against the 12 MiB soft limit (decisions §31).
const logChunk = 512 << 10

// sendRest sends the records from pos to the end of what is written now,
// a chunk at a time, as readRest reads them; dropped goes with the first
// entry sent, and so do the bytes the reader misses on the way. It
// returns the final span, as readRest does, and what was dropped and not
// yet told.
func (k *logKeeper) sendRest(pos logPos, dropped int64, send func(LogEntry) error) (span, int64, error) {
	var buf, scratch []byte
	for {
		sp, err := k.next(pos)
		if err != nil {
			return sp, dropped, err
		}
		dropped += sp.dropped
		if sp.f == nil {
			return sp, dropped, nil
		}
		seen, err := sendSpan(sp, &buf, &scratch, &dropped, send)
		if err != nil {
			return sp, dropped, err
		}
		pos = sp.next
		pos.off = sp.end
		pos.seen += seen
	}
}

// sendSpan sends sp's records, reading them into *buf (kept for the next
// span) a chunk at a time, entries of several in *scratch (see coalesce),
// and returns how many data bytes they held.
func sendSpan(sp span, buf, scratch *[]byte, dropped *int64, send func(LogEntry) error) (seen int64, err error) {
	err = eachChunk(sp, buf, func(recs []record) error {
		return coalesce(recs, scratch, func(e LogEntry) error {
			seen += int64(len(e.Data))
			e.Dropped, *dropped = *dropped, 0
			return send(e)
		})
	})
	return seen, err
}

// eachChunk hands sp's records to use a chunk at a time, read into *buf
// (kept for the next span): their data is valid until use returns.
func eachChunk(sp span, buf *[]byte, use func([]record) error) error {
	defer sp.f.Close()
	// Big enough for the span, up to a chunk, which holds any record:
	// a small log costs a small buffer.
	if need := min(sp.end-sp.next.off, logChunk); int64(len(*buf)) < need {
		*buf = make([]byte, need)
	}
	b := *buf
	have := 0 // bytes of an incomplete record carried to the front of b
	for off := sp.next.off; off < sp.end; {
		n := min(int64(len(b)-have), sp.end-off)
		if _, err := sp.f.ReadAt(b[have:have+int(n)], off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("log: %w", err)
		}
		off += n
		recs, rest, err := parseRecords(b[:have+int(n)])
		if err != nil {
			return err
		}
		if n == 0 || len(recs) == 0 && rest == len(b) {
			// A record larger than the buffer: the file is not a log
			// (records are at most maxRecordData).
			return fmt.Errorf("log: a malformed record")
		}
		if err := use(recs); err != nil {
			return err
		}
		have = copy(b, b[have+int(n)-rest:have+int(n)])
	}
	if have != 0 {
		return fmt.Errorf("log: a record cut short")
	}
	return nil
}

// tailRest returns the records holding the last n lines of what is
// written from pos on (see tailLines), and the final span, as sendRest
// does. It reads the log a chunk at a time and keeps a copy of only the
// records that may hold those lines, so the agent's heap holds about
// them, not the log, which may be up to twice maxLogFileMax.
func (k *logKeeper) tailRest(pos logPos, n int64) ([]record, span, error) {
	var buf []byte
	var keep []record
	var lines []int64 // newlines in each of keep
	total := int64(0)
	for {
		sp, err := k.next(pos)
		if err != nil {
			return nil, sp, err
		}
		if sp.f == nil {
			return tailLines(keep, n), sp, nil
		}
		var seen int64
		err = eachChunk(sp, &buf, func(recs []record) error {
			for _, r := range recs {
				seen += int64(len(r.data))
				if n == 0 {
					continue
				}
				r.data = append([]byte(nil), r.data...)
				nl := int64(bytes.Count(r.data, []byte{'\n'}))
				keep, lines, total = append(keep, r), append(lines, nl), total+nl
				// The front record holds none of the last n lines once
				// those after it hold n newlines and one more (the last
				// byte's may not count: tailLines).
				for len(keep) > 1 && total-lines[0] >= n+1 {
					total -= lines[0]
					keep, lines = keep[1:], lines[1:]
				}
			}
			return nil
		})
		if err != nil {
			return nil, sp, err
		}
		pos = sp.next
		pos.off = sp.end
		pos.seen += seen
	}
}
