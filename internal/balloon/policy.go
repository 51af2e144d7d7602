// Package balloon decides how large a VM's memory balloon should be, from
// the memory statistics its guest reports: the policy a balloon timer
// applies to every running VM (keep what the guest could use near a
// reserve, give the rest back to the host), and its aggressive variant
// (inflate until the guest keeps little beyond what it uses). It decides
// only; the VM manager reads the statistics and moves the balloons.
package balloon

import (
	"github.com/cabinvm/cabin/internal/hypervisor"
)

// MiB is a mebibyte.
const MiB = 1 << 20

// Policy is how a balloon follows its guest's needs.
//
// A guest keeps available (MemAvailable: free memory and caches it can
// drop) its reserve, the larger of MinReserve and its memory divided by
// ReserveDivisor; what it has available beyond that goes into the
// balloon, and the balloon gives back at once what the guest lacks.
// Growing is capped at MaxInflate a step, so a guest whose needs rise
// while the balloon grows is not squeezed past them before the next
// look; giving back is never capped. A balloon never leaves the guest
// less than MinGuest, nor is moved by less than Threshold (each move
// costs the guest work for little).
type Policy struct {
	MinReserve     int64
	ReserveDivisor int64
	MaxInflate     int64
	Threshold      int64
	MinGuest       int64
	// AggressiveReserve is what an aggressive balloon leaves the guest
	// available, and AggressiveStep its largest step.
	AggressiveReserve int64
	AggressiveStep    int64
}

// Default is cabin's policy. The reserve of an eighth of the guest's
// memory, at least 48 MiB, covers the agent starting an exec and a
// container's runtime (decisions.md §13 keeps a reserve in the guest for
// them); an aggressive balloon leaves 16 MiB, about what a guest's kernel
// keeps free on its own (min_free_kbytes and the watermarks above it).
func Default() Policy {
	return Policy{
		MinReserve:        48 * MiB,
		ReserveDivisor:    8,
		MaxInflate:        64 * MiB,
		Threshold:         8 * MiB,
		MinGuest:          int64(hypervisor.MinMemoryMiB) * MiB,
		AggressiveReserve: 16 * MiB,
		AggressiveStep:    32 * MiB,
	}
}

// Reserve is the memory a guest of memory bytes keeps available.
func (p Policy) Reserve(memory int64) int64 {
	r := p.MinReserve
	if p.ReserveDivisor > 0 {
		r = max(r, memory/p.ReserveDivisor)
	}
	return r
}

// MaxSize is the largest balloon a guest of memory bytes may have.
func (p Policy) MaxSize(memory int64) int64 {
	return max(memory-p.MinGuest, 0)
}

// Target is the balloon size the policy wants for a guest that reported
// st, at least floor (a size set by hand); change is false when the
// balloon should stay as it is, as when the guest reported nothing to go
// by.
func (p Policy) Target(st hypervisor.BalloonStats, floor int64) (size int64, change bool) {
	return p.decide(st, floor, p.Reserve(st.Memory), p.MaxInflate)
}

// Aggressive is Target for an aggressive balloon: the guest keeps only
// AggressiveReserve available.
func (p Policy) Aggressive(st hypervisor.BalloonStats, floor int64) (size int64, change bool) {
	return p.decide(st, floor, p.AggressiveReserve, p.AggressiveStep)
}

// Reclaim is the balloon size that takes from a guest that reported st
// all it has available beyond its reserve, but at most limit bytes more
// than the balloon holds (no limit when limit is 0).
func (p Policy) Reclaim(st hypervisor.BalloonStats, limit int64) (size int64, change bool) {
	if st.Available < 0 || st.Memory <= 0 {
		return st.Size, false
	}
	give := st.Available - p.Reserve(st.Memory)
	if limit > 0 {
		give = min(give, limit)
	}
	if give < p.Threshold {
		return st.Size, false
	}
	target := min(st.Size+give, p.MaxSize(st.Memory))
	return target, target > st.Size
}

func (p Policy) decide(st hypervisor.BalloonStats, floor, reserve, step int64) (int64, bool) {
	if st.Available < 0 || st.Memory <= 0 {
		return st.Size, false
	}
	delta := st.Available - reserve
	if delta > 0 {
		delta = min(delta, step)
	}
	target := st.Size + delta
	target = max(target, floor, 0)
	target = min(target, p.MaxSize(st.Memory))
	d := target - st.Size
	if d == 0 {
		return st.Size, false
	}
	// A small move is not worth it, unless it is what keeps the
	// balloon at its floor or within the guest.
	if -p.Threshold < d && d < p.Threshold && st.Size >= floor && st.Size <= p.MaxSize(st.Memory) {
		return st.Size, false
	}
	return target, true
}
