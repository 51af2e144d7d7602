package kata

import (
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
			return seen, fmt.Errorf("log: %w", err)
		}
		off += n
		recs, rest, err := parseRecords(b[:have+int(n)])
		if err != nil {
			return seen, err
		}
		if n == 0 || len(recs) == 0 && rest == len(b) {
			// A record larger than the buffer: the file is not a log
			// (records are at most maxRecordData).
			return seen, fmt.Errorf("log: a malformed record")
		}
		err = coalesce(recs, scratch, func(e LogEntry) error {
			seen += int64(len(e.Data))
			e.Dropped, *dropped = *dropped, 0
			return send(e)
		})
		if err != nil {
			return seen, err
		}
		have = copy(b, b[have+int(n)-rest:have+int(n)])
	}
	if have != 0 {
		return seen, fmt.Errorf("log: a record cut short")
	}
	return seen, nil
}
