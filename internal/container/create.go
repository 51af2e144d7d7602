package container

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// CreateOptions are create's arguments besides the id.
type CreateOptions struct {
	// Bundle holds config.json; an absolute, clean path.
	Bundle string
	// PidFile receives the init's pid; an absolute, clean path in an
	// existing directory.
	PidFile string
	// Terminal asks for a terminal; Stdio then has only Console.
	Terminal bool
	Stdio    Stdio
}

// Create creates container id from the bundle and starts its init, which
// waits for Start before it runs the spec's process, and writes the init's
// pid to the pid file. The init is the runtime's child; it outlives the
// runtime and is reparented when the runtime exits.
//
// Create changes the working directory to the bundle, as the OCI spec
// resolves relative paths in config.json against it.
func (r *Runtime) Create(ctx context.Context, id string, o CreateOptions) (err error) {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkPath("--bundle", o.Bundle); err != nil {
		return err
	}
	if err := checkPidFile(o.PidFile); err != nil {
		return err
	}
	if err := o.Stdio.check(o.Terminal); err != nil {
		return err
	}
	spec, err := loadSpec(o.Bundle)
	if err != nil {
		return err
	}
	if err := checkTerminal("process", spec.Process.Terminal, o.Terminal); err != nil {
		return err
	}
	proc, err := newProcess("process", spec.Process)
	if err != nil {
		return err
	}
	if ok, err := r.exists(id); err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	} else if ok {
		return exists(id)
	}
	pivot, err := canPivot()
	if err != nil {
		return fmt.Errorf("find the root file system: %w", err)
	}
	if err := os.Chdir(o.Bundle); err != nil {
		return invalidf("--bundle: %w", err)
	}
	cfg, err := libcontainerConfig(id, spec, !pivot)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	c, err := libcontainer.Create(r.root, id, cfg)
	if errors.Is(err, libcontainer.ErrExist) || errors.Is(err, os.ErrExist) {
		// Another create won the race for the id since exists.
		return exists(id)
	}
	if err != nil {
		return fmt.Errorf("container %q: create: %w", id, err)
	}
	defer func() {
		if err != nil {
			// Leave nothing behind: no state directory to take the id,
			// no cgroup, no init.
			abandon(c, proc)
		}
	}()

	proc.Init = true
	attach(proc, o.Stdio)
	if err := c.Start(proc); err != nil {
		return fmt.Errorf("container %q: start init: %w", id, err)
	}
	pid, err := proc.Pid()
	if err != nil {
		return fmt.Errorf("container %q: %w", id, errNoPid)
	}
	if err := writePidFile(o.PidFile, pid); err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	}
	return nil
}

// attach gives proc its stdio. Unset files stay nil interfaces, not
// typed nils, since libcontainer tests them against nil.
func attach(proc *libcontainer.Process, s Stdio) {
	if s.Console != nil {
		proc.ConsoleSocket = s.Console
		return
	}
	proc.Stdin, proc.Stdout, proc.Stderr = s.Stdin, s.Stdout, s.Stderr
}

// abandon undoes a create that failed part way: it kills and reaps the
// init if it was started (it is still this process's child), then removes
// the container's state and cgroup. Its errors are secondary to the one
// that made the create fail, and are dropped.
func abandon(c *libcontainer.Container, proc *libcontainer.Process) {
	if _, err := proc.Pid(); err == nil {
		_ = proc.Signal(unix.SIGKILL)
		_, _ = proc.Wait()
	}
	_ = c.Destroy()
}
