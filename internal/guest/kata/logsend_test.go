package kata

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// TestLogsSentInChunks: a log larger than a chunk, records of both
// streams and of every size up to a read's, comes out whole and in order,
// in entries of at most maxEntry bytes, records that straddle a chunk
// included.
func TestLogsSentInChunks(t *testing.T) {
	s, k := keptSandbox(t)
	var want [2]bytes.Buffer
	total := 0
	for i := 0; total < logFileMax-maxRecordData; i++ {
		size := (i*7919)%maxRecordData + 1
		data := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		copy(data, fmt.Sprintf("<%d>", i))
		st := streamStdout
		if i%5 == 4 {
			st = streamStderr
		}
		k.append(st, time.Now(), data)
		want[st-1].Write(data)
		total += size
	}
	if total < 2*logChunk/3 {
		t.Fatalf("only %d bytes written", total)
	}
	var got [2]bytes.Buffer
	entries := 0
	err := s.Logs(context.Background(), "c", false, -1, func(e LogEntry) error {
		if len(e.Data) == 0 || len(e.Data) > maxEntry {
			t.Errorf("an entry of %d bytes", len(e.Data))
		}
		i := 0
		if e.Stderr {
			i = 1
		}
		got[i].Write(e.Data)
		entries++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if !bytes.Equal(got[i].Bytes(), want[i].Bytes()) {
			t.Errorf("stream %d: got %d bytes, want %d, or not in order", i+1, got[i].Len(), want[i].Len())
		}
	}
	if entries < total/maxEntry {
		t.Errorf("%d entries for %d bytes", entries, total)
	}
}

// TestLogsStopWhenClientGoes: a send that fails (the client went) ends
// Logs with that error, mid-file.
func TestLogsStopWhenClientGoes(t *testing.T) {
	s, k := keptSandbox(t)
	for range 100 {
		k.append(streamStdout, time.Now(), bytes.Repeat([]byte("y"), 8000))
	}
	gone := fmt.Errorf("client gone")
	sent := 0
	err := s.Logs(context.Background(), "c", true, -1, func(LogEntry) error {
		if sent++; sent == 3 {
			return gone
		}
		return nil
	})
	if err != gone || sent != 3 {
		t.Errorf("Logs = %v after %d sends, want %v after 3", err, sent, gone)
	}
}
