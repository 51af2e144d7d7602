package container

import (
	"context"
	"fmt"

	"github.com/opencontainers/runc/libcontainer"
)

// Pause freezes every process of container id (its cgroup's freezer). A
// container that is paused already stays so and is no error: the caller
// wants it paused, and it is. One that is stopped is.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	c, st, err := r.loadStatus(id)
	if err != nil {
		return err
	}
	switch st {
	case libcontainer.Paused:
		return nil
	case libcontainer.Stopped:
		return fmt.Errorf("container %q: pause: it is stopped", id)
	}
	if err := c.Pause(); err != nil {
		return fmt.Errorf("container %q: pause: %w", id, err)
	}
	return nil
}

// Resume thaws paused container id. A container that is not paused is an
// error, unless it is running: resuming what runs leaves it so, as a
// second pause does.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	c, st, err := r.loadStatus(id)
	if err != nil {
		return err
	}
	switch st {
	case libcontainer.Running:
		return nil
	case libcontainer.Created, libcontainer.Stopped:
		return fmt.Errorf("container %q: resume: it is %s, not paused", id, st)
	}
	if err := c.Resume(); err != nil {
		return fmt.Errorf("container %q: resume: %w", id, err)
	}
	return nil
}
