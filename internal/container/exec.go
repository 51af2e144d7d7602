package container

import (
	"context"
	"fmt"

	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ExecOptions are exec's arguments besides the id.
type ExecOptions struct {
	// Process is a file holding an OCI process in JSON; an absolute,
	// clean path.
	Process string
	// PidFile receives the process's pid; see CreateOptions.PidFile.
	PidFile  string
	Terminal bool
	Stdio    Stdio
}

// Exec starts a process in container id, which must be created or
// running, writes its pid to the pid file and returns without waiting
// for it: like the init, it is reparented when the runtime exits.
func (r *Runtime) Exec(ctx context.Context, id string, o ExecOptions) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkPath("--process", o.Process); err != nil {
		return err
	}
	if err := checkPidFile(o.PidFile); err != nil {
		return err
	}
	if err := o.Stdio.check(o.Terminal); err != nil {
		return err
	}
	var p specs.Process
	if err := readJSON("--process", o.Process, &p); err != nil {
		return err
	}
	if err := checkProcess("--process", &p); err != nil {
		return err
	}
	if err := checkTerminal("--process", p.Terminal, o.Terminal); err != nil {
		return err
	}
	proc, err := newProcess("--process", &p)
	if err != nil {
		return err
	}

	c, st, err := r.loadStatus(id)
	if err != nil {
		return err
	}
	if st != libcontainer.Created && st != libcontainer.Running {
		return fmt.Errorf("container %q: exec: it is %s", id, st)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	attach(proc, o.Stdio)
	if err := c.Start(proc); err != nil {
		return fmt.Errorf("container %q: exec: %w", id, err)
	}
	pid, err := proc.Pid()
	if err != nil {
		return fmt.Errorf("container %q: exec: %w", id, errNoPid)
	}
	if err := writePidFile(o.PidFile, pid); err != nil {
		// Nobody would know the process: do not leave it running.
		_ = proc.Signal(unix.SIGKILL)
		return fmt.Errorf("container %q: exec: %w", id, err)
	}
	return nil
}
