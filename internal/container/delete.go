package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// How long delete --force waits for a killed container's processes to go.
// SIGKILL takes effect at once; what remains is the kernel tearing the
// processes down, which a large address space can make take a while.
const (
	forceTimeout = 10 * time.Second
	forcePoll    = 10 * time.Millisecond
)

// Delete removes stopped container id: its state and cgroup. With force
// it first kills every process of a container that is not stopped. A
// container with processes is not deleted without force: its status is
// reported instead, as the OCI spec asks ("created" counts as having
// processes: its init waits for start).
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	c, st, err := r.loadStatus(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return r.deleteStale(id, err)
	}
	if err != nil {
		return err
	}
	if st != libcontainer.Stopped {
		if !force {
			return fmt.Errorf("container %q is %s: kill it first or delete with --force", id, st)
		}
		if err := kill(ctx, c); err != nil {
			return fmt.Errorf("container %q: delete --force: %w", id, err)
		}
	}
	if err := c.Destroy(); err != nil {
		return fmt.Errorf("container %q: delete: %w", id, err)
	}
	return nil
}

// deleteStale removes the state directory a create left when it died
// before libcontainer saved the container's state, which libcontainer
// then cannot load: without this, the id could never be used again. With
// no directory at all, it returns notFound.
func (r *Runtime) deleteStale(id string, notFound error) error {
	ok, err := r.exists(id)
	if err != nil || !ok {
		return notFound
	}
	if err := os.RemoveAll(r.stateDir(id)); err != nil {
		return fmt.Errorf("container %q: remove stale state: %w", id, err)
	}
	return nil
}

// kill kills every process of c, thawing it if paused, and waits until
// libcontainer sees it stopped: its init gone or a zombie (the reaper of
// whoever is its parent now collects it).
func kill(ctx context.Context, c *libcontainer.Container) error {
	if err := signalAll(c, unix.SIGKILL); err != nil && !gone(err) {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	t := time.NewTicker(forcePoll)
	defer t.Stop()
	for {
		st, err := c.Status()
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		if st == libcontainer.Stopped {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still %s after SIGKILL: %w", st, ctx.Err())
		case <-t.C:
		}
	}
}
