package maitred

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// unsetTime: a time this close to the epoch is a zero value that came over
// the wire, never a host's real clock.
var unsetTime = time.Unix(24*60*60, 0)

// SetTime sets the system clock to t.
func (m *Maitred) SetTime(t time.Time) error {
	if t.Before(unsetTime) {
		return errdefs.InvalidArgument("time", "must be set")
	}
	if err := m.cfg.SetClock(t); err != nil {
		return fmt.Errorf("set time: %w", err)
	}
	return nil
}

func setRealtime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

const localtime = "localtime"

// SetTimezone points /etc/localtime at the zoneinfo file for name. With
// bind, it bind-mounts the file there instead, for programs that do not
// follow a chain of symlinks.
func (m *Maitred) SetTimezone(ctx context.Context, name string, bind bool) error {
	zone, err := m.zoneFile(ctx, name)
	if err != nil {
		return err
	}
	m.etcMu.Lock()
	defer m.etcMu.Unlock()
	dst := filepath.Join(m.cfg.EtcDir, localtime)
	// A bind mount from an earlier call would make the rename fail
	// (EBUSY) or hide the new mount; remove every layer of it.
	unmountAll(dst)
	if bind {
		return m.bindZone(zone, dst)
	}
	if err := replace(dst, func(tmp string) error { return os.Symlink(zone, tmp) }); err != nil {
		return fmt.Errorf("set timezone: %w", err)
	}
	return nil
}

// zoneFile checks name and returns its zoneinfo file.
func (m *Maitred) zoneFile(ctx context.Context, name string) (string, error) {
	const field = "timezone_name"
	switch {
	case name == "":
		return "", errdefs.InvalidArgument(field, "must not be empty")
	case !isPrintable(name):
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q has unprintable characters", name))
	case !fs.ValidPath(name) || name == ".":
		// fs.ValidPath: relative, clean, no ".." elements.
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a clean relative path", name))
	}
	if err := m.cfg.WaitShare.For(ctx, "zoneinfo"); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	zone := filepath.Join(m.cfg.ZoneinfoDir, filepath.FromSlash(name))
	st, err := os.Stat(zone)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: %q: %w", field, name, errdefs.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	if !st.Mode().IsRegular() {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a zoneinfo file", name))
	}
	return zone, nil
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

func (m *Maitred) bindZone(zone, dst string) error {
	// Mounting onto a symlink would mount onto the file it points to, so
	// put an empty regular file there first.
	if st, err := os.Lstat(dst); err != nil || !st.Mode().IsRegular() {
		if err := replace(dst, func(tmp string) error { return writeFile(tmp, "") }); err != nil {
			return fmt.Errorf("set timezone: %w", err)
		}
	}
	if err := unix.Mount(zone, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("set timezone: bind mount: %w", err)
	}
	// Read-only, so a write to /etc/localtime cannot change the zoneinfo
	// file under it.
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		m.log.Warn("timezone bind mount stays writable", "err", err)
	}
	return nil
}

// unmountAll removes every mount stacked on path, if any. NOFOLLOW: when
// path is a symlink, what it points to is not ours to unmount.
func unmountAll(path string) {
	for unix.Unmount(path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW) == nil {
	}
}

// replace atomically replaces dst with what create makes at a temporary
// name beside it.
func replace(dst string, create func(tmp string) error) error {
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
	// A leftover from a crash would make create fail.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := create(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
