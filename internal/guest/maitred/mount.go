package maitred

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// MountSpec is a mount(2) call and what to do around it.
type MountSpec struct {
	Source  string
	Target  string
	FSType  string
	Flags   uintptr
	Options string
	// CreateTarget makes the target directory if it is missing.
	CreateTarget bool
	// Permissions, when not 0, are set on the target once mounted.
	Permissions uint32
	// MkfsIfNeeded formats Source with mkfs.<FSType> when mounting fails
	// with EINVAL (no filesystem there), then mounts again.
	MkfsIfNeeded bool
}

// Mount mounts s. How the mount went is the returned errno (0 on success),
// as maitred's API reports it; err is for requests that are malformed: a
// field missing or not a C string, or what mkfs would be run with.
//
// The target is where the guest's tree changes, so a path that resolves
// through anything but itself is refused: a relative one (upstream would
// resolve it against maitred's working directory) or one with ".."
// elements. That is a refusal to mount, not a malformed request, so it is
// reported as mount(2) reports an argument it will not take, EINVAL in the
// response. Redundant slashes and "." elements are harmless and cleaned
// away: "/mnt/disk/" mounts on /mnt/disk, as upstream would.
func (m *Maitred) Mount(ctx context.Context, s MountSpec) (syscall.Errno, error) {
	if err := s.validate(); err != nil {
		return 0, err
	}
	target, ok := mountTarget(s.Target)
	if !ok {
		m.log.Warn("mount: target refused: not absolute or has \"..\" elements", "target", s.Target)
		return syscall.EINVAL, nil
	}
	s.Target = target
	if s.MkfsIfNeeded {
		// Both end up on mkfs's command line.
		if !isName(s.FSType) {
			return 0, errdefs.InvalidArgument("fstype", fmt.Sprintf("%q is not a filesystem name mkfs knows", s.FSType))
		}
		if !filepath.IsAbs(s.Source) {
			return 0, errdefs.InvalidArgument("source", fmt.Sprintf("%q must be an absolute path to format", s.Source))
		}
	}
	if m.cfg.WaitModules != nil {
		// Filesystem and block modules load after the agent serves.
		if err := m.cfg.WaitModules(ctx); err != nil {
			return 0, err
		}
	}
	if s.MkfsIfNeeded {
		if err := m.cfg.WaitShare.For(ctx, "mkfs."+s.FSType); err != nil {
			return 0, err
		}
	}
	if s.CreateTarget {
		if err := os.MkdirAll(s.Target, 0o755); err != nil {
			m.log.Warn("mount: create target", "target", s.Target, "err", err)
			return errnoOf(err), nil
		}
	}
	err := unix.Mount(s.Source, s.Target, s.FSType, s.Flags, s.Options)
	if errors.Is(err, unix.EINVAL) && s.MkfsIfNeeded {
		if ferr := m.mkfs(s.FSType, s.Source); ferr != nil {
			m.log.Warn("mount: mkfs failed", "source", s.Source, "fstype", s.FSType, "err", ferr)
		} else {
			err = unix.Mount(s.Source, s.Target, s.FSType, s.Flags, s.Options)
		}
	}
	if err != nil {
		m.log.Debug("mount failed", "source", s.Source, "target", s.Target, "fstype", s.FSType, "err", err)
		return errnoOf(err), nil
	}
	if s.Permissions != 0 {
		if err := unix.Chmod(s.Target, s.Permissions&0o7777); err != nil {
			m.log.Warn("mount: chmod", "target", s.Target, "err", err)
			return errnoOf(err), nil
		}
	}
	return 0, nil
}

// validate rejects malformed requests: no target, or strings a C string
// cannot carry.
func (s MountSpec) validate() error {
	if s.Target == "" {
		return errdefs.InvalidArgument("target", "must not be empty")
	}
	for _, f := range []struct{ name, value string }{
		{"source", s.Source}, {"target", s.Target}, {"fstype", s.FSType}, {"options", s.Options},
	} {
		if strings.IndexByte(f.value, 0) >= 0 {
			return errdefs.InvalidArgument(f.name, fmt.Sprintf("%q contains a NUL byte", f.value))
		}
	}
	return nil
}

// mountTarget returns target cleaned, or false when it is relative or has
// ".." elements (see Mount).
func mountTarget(target string) (string, bool) {
	if !filepath.IsAbs(target) {
		return "", false
	}
	for _, elem := range strings.Split(target, "/") {
		if elem == ".." {
			return "", false
		}
	}
	return filepath.Clean(target), true
}

// mkfs formats source with mkfs.<fstype> from PATH.
func (m *Maitred) mkfs(fstype, source string) error {
	path, err := exec.LookPath("mkfs." + fstype)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		w.Close()
		return err
	}
	defer null.Close()
	cmd := exec.Command(path, source)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, w, w
	_, exits, err := m.cfg.Reaper.StartCmd(cmd)
	w.Close()
	if err != nil {
		return err
	}
	// Keep the start of the output for the log; drain the rest so mkfs
	// never blocks on a full pipe.
	out, _ := io.ReadAll(io.LimitReader(r, 4<<10))
	io.Copy(io.Discard, r)
	// Not cut short by the caller's context: a half-made filesystem is
	// worse than a late answer.
	e := <-exits
	if e.Code != 0 || e.Signal != 0 {
		return fmt.Errorf("%s: %v: %s", path, e, strings.TrimSpace(string(out)))
	}
	m.log.Info("formatted", "source", source, "fstype", fstype)
	return nil
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}

func isName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
