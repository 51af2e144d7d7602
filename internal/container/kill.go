package container

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// Kill sends sig to container id's init or, with all, to every process in
// its cgroup. A container whose processes have exited is not an error:
// the signal raced with an exit the caller will see anyway.
func (r *Runtime) Kill(ctx context.Context, id string, sig unix.Signal, all bool) error {
	c, err := r.load(id)
	if err != nil {
		return err
	}
	if all {
		err = signalAll(c, sig)
	} else {
		err = c.Signal(sig)
	}
	if gone(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("container %q: kill %v: %w", id, sig, err)
	}
	return nil
}

// gone tells whether err only says the target has already exited.
func gone(err error) bool {
	return errors.Is(err, libcontainer.ErrNotRunning) ||
		errors.Is(err, unix.ESRCH) ||
		errors.Is(err, os.ErrProcessDone)
}

// signalAll signals every process in c's cgroup. libcontainer does this
// itself only for SIGKILL in a container sharing its PID namespace, and
// not in its API, so it is done here on its cgroup manager, the same way:
// freeze the cgroup so that no process forks or exits between reading the
// list and signalling it, signal each process, and thaw. SIGKILL goes
// through cgroup.kill where there is one. A cgroup the caller has paused
// stays frozen, except that SIGKILL thaws it, as libcontainer's own kill
// does.
func signalAll(c *libcontainer.Container, sig unix.Signal) error {
	st, err := c.State()
	if err != nil {
		return err
	}
	cfg := c.Config()
	m, err := manager.NewWithPaths(cfg.Cgroups, st.CgroupPaths)
	if err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	if !m.Exists() {
		// Every process has exited and the cgroup is gone.
		return libcontainer.ErrNotRunning
	}
	state, err := m.GetFreezerState()
	if err != nil {
		return fmt.Errorf("cgroup freezer: %w", err)
	}
	wasFrozen := state == cgroups.Frozen
	if sig == unix.SIGKILL {
		err := killCgroup(m)
		if err == nil {
			if wasFrozen {
				// Killed processes of a frozen cgroup v1 do not die
				// until it thaws, and a frozen cgroup, empty or not,
				// keeps the container "paused" for libcontainer.
				err = m.Freeze(cgroups.Thawed)
			}
			return err
		}
		if !errors.Is(err, errors.ErrUnsupported) {
			return err
		}
	}
	if !wasFrozen {
		if err := m.Freeze(cgroups.Frozen); err != nil {
			return fmt.Errorf("freeze: %w", err)
		}
	}
	pids, err := m.GetAllPids()
	if err == nil {
		for _, pid := range pids {
			if kerr := unix.Kill(pid, sig); kerr != nil && kerr != unix.ESRCH {
				err = errors.Join(err, fmt.Errorf("pid %d: %w", pid, kerr))
			}
		}
	}
	if !wasFrozen || sig == unix.SIGKILL {
		if terr := m.Freeze(cgroups.Thawed); terr != nil {
			err = errors.Join(err, fmt.Errorf("thaw: %w", terr))
		}
	}
	return err
}

// killCgroup kills every process of m's cgroup at once through
// cgroup.kill (cgroup v2, Linux 5.14): frozen or not, and with no fork
// escaping it. It returns errors.ErrUnsupported where there is none.
func killCgroup(m cgroups.Manager) error {
	p := m.Path("")
	if p == "" {
		return errors.ErrUnsupported
	}
	err := cgroups.WriteFile(p, "cgroup.kill", "1")
	if errors.Is(err, os.ErrNotExist) {
		return errors.ErrUnsupported
	}
	if err != nil {
		return fmt.Errorf("cgroup.kill: %w", err)
	}
	return nil
}
