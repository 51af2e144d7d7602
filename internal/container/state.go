package container

import (
	"context"
	"fmt"

	"github.com/opencontainers/runc/libcontainer"
)

// State is what the state command prints, as JSON.
type State struct {
	ID string `json:"id"`
	// Pid is the init's pid in the runtime's PID namespace; 0 once the
	// container has stopped, since the number may belong to another
	// process by then.
	Pid int `json:"pid"`
	// Status is created, running, paused or stopped.
	Status string `json:"status"`
}

// State reports container id's state.
func (r *Runtime) State(ctx context.Context, id string) (State, error) {
	c, st, err := r.loadStatus(id)
	if err != nil {
		return State{}, err
	}
	s := State{ID: id, Status: st.String()}
	if st != libcontainer.Stopped {
		ls, err := c.State()
		if err != nil {
			return State{}, fmt.Errorf("container %q: state: %w", id, err)
		}
		s.Pid = ls.InitProcessPid
	}
	return s, nil
}
