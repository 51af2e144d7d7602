package hypervisor

import (
	"context"
	"time"
)

// Balloon is a VM with a memory balloon (virtio-balloon): memory the guest
// hands back to the host, which frees its backing, and takes back when the
// balloon deflates. Every VM internal/qemu launches has one; the manager
// finds it by a type assertion on VM.
//
// The guest also reports its free pages by itself (free page reporting),
// with no call here: the host frees what the guest does not use whatever
// the balloon's size.
type Balloon interface {
	// SetBalloon asks the guest to put size bytes of its RAM into the
	// balloon: 0 gives it all back. It returns once the hypervisor has
	// taken the target; the guest gets there in its own time (see
	// BalloonStats.Size). size is at least 0 and less than the guest's
	// RAM, else ErrInvalidArgument naming "size".
	SetBalloon(ctx context.Context, size int64) error
	// BalloonSize is the memory in the balloon now.
	BalloonSize(ctx context.Context) (int64, error)
	// BalloonStats returns the balloon's size and the guest's memory
	// statistics as the guest reported them at since or later (the
	// guest's reports are stamped in whole seconds, so a since within
	// the current second can take up to a second more): the guest is
	// asked afresh when its last report is older. It fails with
	// ErrUnavailable when the guest does not answer within a few
	// seconds (its driver not loaded yet, or its vCPUs paused).
	BalloonStats(ctx context.Context, since time.Time) (BalloonStats, error)
}

// BalloonStats is a balloon's state and the guest's own view of its
// memory. A statistic the guest did not report is -1.
type BalloonStats struct {
	// Memory is the guest's RAM, as the VM was given it.
	Memory int64
	// Size is the memory in the balloon now, which moves towards the
	// last target set as the guest gives or takes pages.
	Size int64
	// Total is the memory the guest's kernel manages (MemTotal). With
	// deflate-on-oom it does not shrink as the balloon grows.
	Total int64
	// Free is the guest's unused memory (MemFree).
	Free int64
	// Available is what the guest could use without swapping
	// (MemAvailable): free memory and caches it can drop.
	Available int64
	// Caches is the guest's page cache (Buffers + Cached).
	Caches int64
	// SwapIn and SwapOut are bytes moved from and to swap since boot.
	SwapIn, SwapOut int64
	// MajorFaults and MinorFaults count the guest's page faults.
	MajorFaults, MinorFaults int64
	// Updated is when the guest reported the statistics.
	Updated time.Time
}

// BootFileReleaser is a VM whose hypervisor keeps the files it booted
// from mapped for its life (QEMU does, to load them again at a reset).
// ReleaseBootFiles drops the pages of the files at paths it holds, which
// it reads back from the files should it ever need them; it returns how
// many bytes of mappings it let go of.
type BootFileReleaser interface {
	ReleaseBootFiles(paths ...string) (int64, error)
}
