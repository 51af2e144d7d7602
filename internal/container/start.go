package container

import (
	"context"
	"fmt"

	"github.com/opencontainers/runc/libcontainer"
)

// Start lets the init of created container id run the spec's process.
func (r *Runtime) Start(ctx context.Context, id string) error {
	c, st, err := r.loadStatus(id)
	if err != nil {
		return err
	}
	if st != libcontainer.Created {
		return fmt.Errorf("container %q: start: it is %s, not created", id, st)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// The init blocks opening the exec fifo for writing; Exec opens it
	// for reading, which lets it go on to exec the process.
	if err := c.Exec(); err != nil {
		return fmt.Errorf("container %q: start: %w", id, err)
	}
	return nil
}
