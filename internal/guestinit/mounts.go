// Package guestinit does what the guest agent must do as PID 1: mount the
// kernel filesystems, set up /dev, the host name and the environment, load
// kernel modules, wait for the host's port, and power the VM off in order.
// Its ladder for ending processes (Terminate: SIGTERM, then SIGKILL after a
// grace) also serves the agent when it is not PID 1.
// What it mounts and links is described as data (Mounts, Symlinks) and then
// applied, so the tables can be read and tested on their own.
package guestinit

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem PID 1 mounts.
type Mount struct {
	Source string
	Target string
	FSType string
	Flags  uintptr
	Data   string
}

const (
	nosuid = unix.MS_NOSUID
	nodev  = unix.MS_NODEV
	noexec = unix.MS_NOEXEC
)

// Mounts is the table of filesystems PID 1 mounts, in order: a target is
// mounted after the filesystem that holds it.
func Mounts() []Mount {
	return []Mount{
		{"proc", "/proc", "proc", nosuid | nodev | noexec, ""},
		{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, ""},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"},
		// newinstance gives the guest its own pty namespace, so a container
		// runtime can mount further instances without sharing this one.
		{"devpts", "/dev/pts", "devpts", nosuid | noexec, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"shm", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777"},
		{"run", "/run", "tmpfs", nosuid | nodev, "mode=0755"},
		{"tmp", "/tmp", "tmpfs", nosuid | nodev, "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, ""},
	}
}

// Symlink is a link PID 1 makes: Link points at Target.
type Symlink struct {
	Target string
	Link   string
}

// Symlinks is the table of links PID 1 makes in /dev once it is mounted.
func Symlinks() []Symlink {
	return []Symlink{
		{"/proc/self/fd", "/dev/fd"},
		{"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"},
		{"/proc/self/fd/2", "/dev/stderr"},
		// With a newinstance devpts, /dev/ptmx must be the instance's
		// multiplexer; devtmpfs's node would open the initial instance.
		{"pts/ptmx", "/dev/ptmx"},
	}
}

// Environment is what PID 1 puts in its environment, which every process it
// starts inherits. The kernel passes init only HOME=/ and TERM=linux.
func Environment() map[string]string {
	return map[string]string{
		"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME": "/root",
		"TERM": "linux",
	}
}

// mountAll applies ms below root ("/" in the guest). It goes on past a
// mount that fails, since the rest may still let the agent reach the host
// and say what went wrong, and returns the failures joined.
func mountAll(root string, ms []Mount, log *slog.Logger) error {
	var errs []error
	for _, m := range ms {
		target := filepath.Join(root, m.Target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.Target, err))
			continue
		}
		err := unix.Mount(m.Source, target, m.FSType, m.Flags, m.Data)
		if errors.Is(err, unix.EBUSY) {
			// Already mounted, e.g. by a kernel with devtmpfs.mount=1.
			log.Debug("already mounted", "target", m.Target)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err))
		}
	}
	return errors.Join(errs...)
}

// linkAll makes the links in ls below root, replacing whatever is there.
func linkAll(root string, ls []Symlink) error {
	var errs []error
	for _, l := range ls {
		link := filepath.Join(root, l.Link)
		if cur, err := os.Readlink(link); err == nil && cur == l.Target {
			continue
		}
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("link %s: %w", l.Link, err))
			continue
		}
		if err := os.Symlink(l.Target, link); err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", l.Link, err))
		}
	}
	return errors.Join(errs...)
}

// Setup mounts the Mounts, makes the Symlinks and sets the Environment.
// Like mountAll it does all it can and returns what failed.
func Setup(log *slog.Logger) error {
	errs := []error{mountAll("/", Mounts(), log), linkAll("/", Symlinks())}
	for k, v := range Environment() {
		if err := os.Setenv(k, v); err != nil {
			errs = append(errs, fmt.Errorf("set %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// SetHostname sets the kernel's host name; an empty name leaves it alone.
func SetHostname(name string) error {
	if name == "" {
		return nil
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	return nil
}
