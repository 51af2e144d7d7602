package diskimage

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stuckSink takes `take` writes, then blocks every later one until
// released, telling blocked when it does.
type stuckSink struct {
	take    int32
	writes  atomic.Int32
	blocked chan struct{}
	release chan struct{}
}

func newStuckSink(take int32) *stuckSink {
	return &stuckSink{take: take, blocked: make(chan struct{}, 1), release: make(chan struct{})}
}

func (s *stuckSink) Begin(Format, int64, int64) error { return nil }

func (s *stuckSink) Write(Chunk) error {
	if s.writes.Add(1) <= s.take {
		return nil
	}
	select {
	case s.blocked <- struct{}{}:
	default:
	}
	<-s.release
	return errors.New("stream closed")
}

type exportOutcome struct {
	err error
}

// startStuckExport exports alice's image into sink on a goroutine and
// returns the operation once the sink blocked.
func startStuckExport(t *testing.T, s *Store, req ExportRequest, sink *stuckSink) (*Op, <-chan exportOutcome) {
	t.Helper()
	res, err := s.Create(t.Context(), CreateRequest{Key: alice, Format: FormatRaw, Size: 64 << 20, Allocation: AllocSparse})
	if err != nil {
		t.Fatal(err)
	}
	writeData(t, res.Path, 0, 8<<20)
	ops := make(chan *Op, 1)
	out := make(chan exportOutcome, 1)
	go func() {
		_, err := s.Export(context.Background(), req, sink, func(o *Op) { ops <- o })
		out <- exportOutcome{err}
	}()
	op := <-ops
	<-sink.blocked
	return op, out
}

func TestExportCancelWithSinkBlocked(t *testing.T) {
	s := newStore(t, t.TempDir())
	sink := newStuckSink(2)
	defer close(sink.release)
	op, out := startStuckExport(t, s, ExportRequest{Key: alice}, sink)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := op.Cancel(ctx); err != nil {
		t.Fatalf("Cancel with the sink blocked = %v", err)
	}
	if p := op.Progress(); p.Status != StatusFailed || p.Reason != "cancelled" {
		t.Errorf("cancelled export = %+v", p)
	}
	if s.Busy(alice) {
		t.Error("the image is still held")
	}
	o := <-out
	if !errors.Is(o.err, ErrBlocked) || !errors.Is(o.err, ErrCancelled) || !errors.Is(o.err, context.Canceled) {
		t.Errorf("Export = %v, want ErrBlocked and ErrCancelled", o.err)
	}
	// The image serves again while the old sink is still stuck.
	if _, err := s.Export(t.Context(), ExportRequest{Key: alice}, &memSink{}, nil); err != nil {
		t.Errorf("export after the cancel = %v", err)
	}
	if n := sink.writes.Load(); n != 3 {
		t.Errorf("%d writes to the stuck sink, want 3: none after the blocked one", n)
	}
}

func TestExportSinkStallBound(t *testing.T) {
	s := newStore(t, t.TempDir())
	sink := newStuckSink(1)
	defer close(sink.release)
	op, out := startStuckExport(t, s, ExportRequest{Key: alice, Stall: 50 * time.Millisecond}, sink)
	o := <-out
	if !errors.Is(o.err, ErrBlocked) || !errors.Is(o.err, context.DeadlineExceeded) {
		t.Errorf("Export = %v, want ErrBlocked and DeadlineExceeded", o.err)
	}
	if p := op.Progress(); p.Status != StatusFailed || !strings.Contains(p.Reason, "the receiver took no data for 50ms") {
		t.Errorf("stalled export = %+v", p)
	}
	if s.Busy(alice) {
		t.Error("the image is still held")
	}
	if n := sink.writes.Load(); n != 2 {
		t.Errorf("%d writes to the stuck sink, want 2", n)
	}
}

// A call the guard has not started when the export ends never starts.
func TestGuardClosed(t *testing.T) {
	sink := newStuckSink(100)
	g := newGuard(t.Context(), 0, "stalled")
	gs := guardedSink{sink: sink, g: g}
	if err := gs.Write(Chunk{}); err != nil {
		t.Fatal(err)
	}
	if g.close() {
		t.Error("close says a call is under way")
	}
	if err := gs.Write(Chunk{}); !errors.Is(err, ErrCancelled) {
		t.Errorf("Write after close = %v", err)
	}
	if n := sink.writes.Load(); n != 1 {
		t.Errorf("%d writes, want 1", n)
	}
}

// stuckSource gives one chunk, then blocks until released.
type stuckSource struct {
	calls   atomic.Int32
	blocked chan struct{}
	release chan struct{}
}

func (s *stuckSource) Next() (Chunk, error) {
	if s.calls.Add(1) == 1 {
		return Chunk{Offset: 0, Data: make([]byte, 4096)}, nil
	}
	s.blocked <- struct{}{}
	<-s.release
	return Chunk{}, errors.New("stream closed")
}

func TestImportCancelWithSourceBlocked(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stall  time.Duration
		cancel bool
		want   error
		reason string
	}{
		{"cancelled", 0, true, context.Canceled, "cancelled"},
		{"stalled", 50 * time.Millisecond, false, context.DeadlineExceeded, "the sender gave no data for 50ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, t.TempDir())
			src := &stuckSource{blocked: make(chan struct{}, 1), release: make(chan struct{})}
			defer close(src.release)
			ops := make(chan *Op, 1)
			out := make(chan error, 1)
			go func() {
				_, err := s.Import(context.Background(), ImportRequest{Key: alice, Format: FormatRaw, Size: 16 << 20, Data: 1 << 20, Stall: tc.stall}, src, func(o *Op) { ops <- o })
				out <- err
			}()
			op := <-ops
			<-src.blocked
			if tc.cancel {
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				if err := op.Cancel(ctx); err != nil {
					t.Fatalf("Cancel with the source blocked = %v", err)
				}
			}
			if err := <-out; !errors.Is(err, ErrBlocked) || !errors.Is(err, tc.want) {
				t.Errorf("Import = %v, want ErrBlocked and %v", err, tc.want)
			}
			if p := op.Progress(); p.Status != StatusFailed || !strings.Contains(p.Reason, tc.reason) {
				t.Errorf("import = %+v", p)
			}
			if s.Busy(alice) {
				t.Error("the image is still held")
			}
			noLeftovers(t, s)
			if n := src.calls.Load(); n != 2 {
				t.Errorf("%d calls to the source, want 2", n)
			}
		})
	}
}

// BenchmarkGuardDo is what the guard adds to each sink or source call (a
// chunk of up to 1 MiB).
func BenchmarkGuardDo(b *testing.B) {
	g := newGuard(b.Context(), 0, "stalled")
	for b.Loop() {
		if err := g.do(func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
