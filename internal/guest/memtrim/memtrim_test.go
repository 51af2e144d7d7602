package memtrim

import (
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
)

func TestTrimsOnceThresholdMoved(t *testing.T) {
	var trims atomic.Int32
	tr := newTrimmer(100, func() { trims.Add(1) })
	tr.Moved(60)
	tr.Moved(0)
	tr.Moved(-5)
	tr.Wait()
	if n := trims.Load(); n != 0 {
		t.Fatalf("trimmed %d times after 60 of 100 bytes", n)
	}
	tr.Moved(40)
	tr.Wait()
	if n := trims.Load(); n != 1 {
		t.Fatalf("trimmed %d times after 100 of 100 bytes, want once", n)
	}
	// The count starts again after a trim.
	tr.Moved(99)
	tr.Wait()
	if n := trims.Load(); n != 1 {
		t.Fatalf("trimmed %d times after 99 more bytes, want still once", n)
	}
}

func TestTrimsDoNotOverlap(t *testing.T) {
	release := make(chan struct{})
	var running, most, trims atomic.Int32
	tr := newTrimmer(1, func() {
		n := running.Add(1)
		if n > most.Load() {
			most.Store(n)
		}
		<-release
		running.Add(-1)
		trims.Add(1)
	})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); tr.Moved(10) }()
	}
	wg.Wait()
	close(release)
	tr.Wait()
	if most.Load() != 1 {
		t.Errorf("%d trims ran at once", most.Load())
	}
	// Bytes counted while a trim ran start the next one, not more.
	tr.Moved(1)
	tr.Wait()
	if n := trims.Load(); n != 2 {
		t.Errorf("%d trims, want 2: one for the burst, one after it", n)
	}
}

func TestNewForcesACollection(t *testing.T) {
	forced := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	before := forced()
	tr := New(DefaultThreshold)
	tr.Moved(DefaultThreshold - 1)
	tr.Wait()
	if forced() != before {
		t.Fatal("trimmed below the threshold")
	}
	tr.Moved(1)
	tr.Wait()
	if forced() == before {
		t.Error("no forced collection: debug.FreeOSMemory did not run")
	}
}
