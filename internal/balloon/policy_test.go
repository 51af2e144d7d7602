package balloon

import (
	"testing"

	"github.com/cabinvm/cabin/internal/hypervisor"
)

// guest is the statistics of a 512 MiB guest with size in its balloon
// and available memory available.
func guest(size, available int64) hypervisor.BalloonStats {
	return hypervisor.BalloonStats{Memory: 512 * MiB, Size: size, Total: 490 * MiB, Free: available / 2, Available: available, Caches: available / 2}
}

func TestTarget(t *testing.T) {
	p := Default()
	// A 512 MiB guest's reserve is 64 MiB (an eighth).
	if r := p.Reserve(512 * MiB); r != 64*MiB {
		t.Fatalf("reserve %d MiB, want 64", r/MiB)
	}
	if r := p.Reserve(128 * MiB); r != 48*MiB {
		t.Fatalf("reserve of a small guest %d MiB, want the 48 MiB floor", r/MiB)
	}
	for _, tc := range []struct {
		name       string
		st         hypervisor.BalloonStats
		floor      int64
		want       int64
		wantChange bool
	}{
		{"idle guest: inflate one step", guest(0, 400*MiB), 0, 64 * MiB, true},
		{"near the reserve: inflate the rest", guest(200*MiB, 84*MiB), 0, 220 * MiB, true},
		{"at the reserve: hold", guest(200*MiB, 64*MiB), 0, 200 * MiB, false},
		{"within the threshold: hold", guest(200*MiB, 70*MiB), 0, 200 * MiB, false},
		{"short of memory: give back all it lacks at once", guest(300*MiB, 10*MiB), 0, 246 * MiB, true},
		{"very short: the balloon empties, no further", guest(20*MiB, 0), 0, 0, true},
		{"empty balloon, short guest: nothing to give", guest(0, 10*MiB), 0, 0, false},
		{"floor holds against need", guest(100*MiB, 10*MiB), 100 * MiB, 100 * MiB, false},
		{"floor raises a small balloon", guest(0, 10*MiB), 100 * MiB, 100 * MiB, true},
		{"floor raises even by a little", guest(96*MiB, 64*MiB), 100 * MiB, 100 * MiB, true},
		{"never below MinGuest", guest(440*MiB, 200*MiB), 0, 448 * MiB, true},
		{"no stats: hold", hypervisor.BalloonStats{Memory: 512 * MiB, Size: 5 * MiB, Available: -1}, 0, 5 * MiB, false},
	} {
		got, change := p.Target(tc.st, tc.floor)
		if got != tc.want || change != tc.wantChange {
			t.Errorf("%s: Target = %d MiB, %v; want %d MiB, %v", tc.name, got/MiB, change, tc.want/MiB, tc.wantChange)
		}
	}
}

// A guest whose use stays the same settles: the balloon stops moving at
// the reserve, in a few steps, without oscillating.
func TestTargetSettles(t *testing.T) {
	p := Default()
	const used = 150 * MiB
	size := int64(0)
	var moves int
	for range 20 {
		st := guest(size, 512*MiB-used-size)
		next, change := p.Target(st, 0)
		if !change {
			break
		}
		if next < size {
			t.Fatalf("balloon shrank from %d to %d MiB with the guest's use unchanged", size/MiB, next/MiB)
		}
		size = next
		moves++
	}
	if want := 512*MiB - used - p.Reserve(512*MiB); size != want {
		t.Errorf("settled at %d MiB, want %d", size/MiB, want/MiB)
	}
	if moves > 6 {
		t.Errorf("%d moves to settle", moves)
	}
	// The guest then uses 50 MiB more: all of it comes back at once.
	st := guest(size, 512*MiB-used-50*MiB-size)
	next, change := p.Target(st, 0)
	if !change || next != size-50*MiB {
		t.Errorf("after 50 MiB more use: %d MiB, %v; want %d", next/MiB, change, (size-50*MiB)/MiB)
	}
}

func TestAggressive(t *testing.T) {
	p := Default()
	got, change := p.Aggressive(guest(0, 300*MiB), 0)
	if !change || got != 32*MiB {
		t.Errorf("first step %d MiB, %v; want 32", got/MiB, change)
	}
	// Near used memory: the last step leaves the aggressive reserve.
	got, change = p.Aggressive(guest(300*MiB, 40*MiB), 0)
	if !change || got != 324*MiB {
		t.Errorf("last step %d MiB, %v; want 324", got/MiB, change)
	}
	if _, change := p.Aggressive(guest(324*MiB, 16*MiB), 0); change {
		t.Error("aggressive balloon moved at its reserve")
	}
}

func TestReclaim(t *testing.T) {
	p := Default()
	for _, tc := range []struct {
		name   string
		st     hypervisor.BalloonStats
		limit  int64
		want   int64
		change bool
	}{
		{"everything beyond the reserve", guest(0, 400*MiB), 0, 336 * MiB, true},
		{"on top of the balloon", guest(100*MiB, 200*MiB), 0, 236 * MiB, true},
		{"page limit", guest(0, 400*MiB), 10 * MiB, 10 * MiB, true},
		{"page limit under the threshold", guest(0, 400*MiB), 4096, 0, false},
		{"nothing beyond the reserve", guest(0, 60*MiB), 0, 0, false},
		{"never below MinGuest", guest(400*MiB, 112*MiB), 0, 448 * MiB, true},
		{"no stats", hypervisor.BalloonStats{Memory: 512 * MiB, Available: -1}, 0, 0, false},
	} {
		got, change := p.Reclaim(tc.st, tc.limit)
		if got != tc.want || change != tc.change {
			t.Errorf("%s: Reclaim = %d MiB, %v; want %d MiB, %v", tc.name, got/MiB, change, tc.want/MiB, tc.change)
		}
	}
}
