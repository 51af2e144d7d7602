package storage

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// BalloonHeadroom is what the balloon keeps between the host's free space
// and the guest's: the guest sees about the host's free space less this
// (upstream's 1 GiB).
const BalloonHeadroom = 1 << 30

// ErrBalloonInflate is why the balloon could not grow as asked (the
// filesystem had not the room, or would not allocate it): Maitred's
// BALLOON_INFLATE_FAILED.
var ErrBalloonInflate = errors.New("storage balloon failed to inflate")

// AdjustBalloon sizes the storage balloon, an unnamed file on the
// stateful filesystem, so that the filesystem's free space is the host's
// less BalloonHeadroom (none when the host has less): a guest never
// believes it has room the host's disk, where its image lives, has not.
// As upstream (brillo's StorageBalloon), the balloon grows by fallocate
// and shrinks by ftruncate, and it is unnamed (O_TMPFILE), so it is gone
// when the agent is, and with the filesystem's next mount after a
// crash. Unlike upstream, the free space counted is what the guest's
// programs see (f_bavail, df's "Avail"), not f_bfree: on ext4 that also
// counts the clusters the filesystem keeps back for itself (2% of it, up
// to 4096 clusters), which no fallocate can take, so a balloon sized on
// it would leave the guest less than asked and fail to inflate whenever
// the host has less than the headroom.
//
// When the host has less than the headroom the balloon would be larger
// than the guest's free space: it takes all of that (the guest sees 0
// free), and that is success. A negative hostFree is InvalidArgument: a
// host that does not know its free space must not fill the guest's
// disk. When the balloon cannot grow as far as asked, and the guest still
// sees more than the target, it keeps what it could take, and the error
// wraps ErrBalloonInflate.
func (s *Stateful) AdjustBalloon(hostFree int64) error {
	if hostFree < 0 {
		return errdefs.InvalidArgument("free_space_bytes", fmt.Sprintf("%d: must not be negative", hostFree))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.mountedDev(); err != nil {
		return err
	}
	if s.balloon == nil {
		fd, err := unix.Open(s.cfg.MountPoint, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("storage balloon: open an unnamed file on %s: %w", s.cfg.MountPoint, err)
		}
		s.balloon = os.NewFile(uintptr(fd), "storage balloon")
	}
	fd := int(s.balloon.Fd())
	target := max(hostFree-BalloonHeadroom, 0)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return fmt.Errorf("storage balloon: statfs: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("storage balloon: stat: %w", err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	have := st.Blocks * 512
	grow := free - target
	switch {
	case grow == 0:
	case grow < 0:
		if err := unix.Ftruncate(fd, max(have+grow, 0)); err != nil {
			return fmt.Errorf("storage balloon: deflate: %w", err)
		}
	default:
		err := unix.Fallocate(fd, 0, have, grow)
		if errors.Is(err, unix.ENOSPC) {
			// Asked for all the free space, the balloon cannot have the
			// last blocks: its own extent tree needs them. It keeps what
			// it took, which is enough if the guest now sees no more
			// than the target.
			if err := unix.Fstatfs(fd, &fs); err == nil && int64(fs.Bavail)*fs.Bsize <= target {
				s.log.Debug("storage balloon took all the free space", "target", target)
				break
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %d bytes more than its %d: %w", ErrBalloonInflate, grow, have, err)
		}
	}
	s.log.Debug("storage balloon adjusted", "host_free", hostFree, "guest_free_before", free, "balloon_before", have, "change", grow)
	return nil
}

// BalloonBytes is the space the balloon holds.
func (s *Stateful) BalloonBytes() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.balloon == nil {
		return 0, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(s.balloon.Fd()), &st); err != nil {
		return 0, fmt.Errorf("storage balloon: stat: %w", err)
	}
	return st.Blocks * 512, nil
}

// dropBalloon closes the balloon, which frees its space. Called with s.mu
// held.
func (s *Stateful) dropBalloon() {
	if s.balloon != nil {
		s.balloon.Close()
		s.balloon = nil
	}
}
