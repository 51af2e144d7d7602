package kata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// state is where a container is in its life. Whether it has stopped is
// its init's exit, not a state: the agent learns of that from the reaper.
type state int

const (
	// creating: the id is taken, but the container is not there yet; to
	// other calls it does not exist.
	creating state = iota
	created
	running
	paused
)

var stateNames = [...]string{"being created", "created", "running", "paused"}

func (s state) String() string { return stateNames[s] }

// container is a container and its processes.
type container struct {
	id     string
	bundle string

	// op orders the calls that change the container (start, exec,
	// pause, resume, remove), one at a time.
	op sync.Mutex

	// Under Sandbox.mu:
	state    state
	removing bool
	storages []string // mount points it holds
	init     *process
	// procs are its processes by exec id, the init's under the
	// container's id, until they are waited for and their output read.
	procs map[string]*process
	// meta is what List and Logs report (list.go); set once created.
	meta *tracked
}

// status says why c cannot run something, or nil when it can. Called with
// Sandbox.mu held.
func (c *container) status() error {
	switch {
	case c.removing:
		return fmt.Errorf("container %q is being removed: %w", c.id, errdefs.ErrFailedPrecondition)
	case c.init != nil && c.init.exited():
		return fmt.Errorf("container %q has stopped: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Create creates a container from spec, after mounting storages; it runs
// nothing of the spec's until Start. The spec is kept within the
// sandbox's Bounds, in place. On failure it leaves things as they were.
func (s *Sandbox) Create(ctx context.Context, id string, spec *specs.Spec, storages []Storage) (err error) {
	if err := checkID("container_id", id); err != nil {
		return err
	}
	if spec == nil || spec.Process == nil || spec.Root == nil {
		return errdefs.InvalidArgument("OCI", "needs a process and a root")
	}
	vmNetwork, err := shareNetwork("OCI.Linux", spec)
	if err != nil {
		return err
	}
	opts, err := containerOptions(spec.Annotations)
	if err != nil {
		return err
	}
	if b := s.cfg.Bounds; b != nil {
		if err := b.apply(id, spec); err != nil {
			return err
		}
	}
	if err := s.mounts.check("storages", storages); err != nil {
		return err
	}
	c := &container{id: id, bundle: filepath.Join(s.cfg.Bundles, id), procs: map[string]*process{}}
	s.mu.Lock()
	if s.containers[id] != nil {
		s.mu.Unlock()
		return fmt.Errorf("container %q: %w", id, errdefs.ErrAlreadyExists)
	}
	s.containers[id] = c
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			delete(s.containers, id)
			s.mu.Unlock()
		}
	}()

	points, err := s.mounts.acquire(ctx, "storages", storages)
	if err != nil {
		return err
	}
	undo := func() {
		os.RemoveAll(c.bundle)
		if _, err := s.mounts.release(points); err != nil {
			s.log.Warn("undo storages", "container", id, "err", err)
		}
	}
	// A user by name needs the root mounted: the image's /etc/passwd.
	if err := resolveUser(spec); err != nil {
		undo()
		return err
	}
	if err := writeBundle(c.bundle, spec); err != nil {
		undo()
		return err
	}
	pidFile := filepath.Join(c.bundle, initPidFile)
	args := []string{"create", "--bundle", c.bundle, "--pid-file", pidFile}
	if spec.Process.Terminal {
		args = append(args, "--terminal")
	}
	initProc, err := s.start(id, true, spec.Process.Terminal, append(args, id), pidFile)
	if err != nil {
		if errors.As(err, new(startedHalf)) {
			s.deleteForce(id)
		}
		undo()
		return err
	}
	s.mu.Lock()
	c.state, c.init, c.storages = created, initProc, points
	c.procs[id] = initProc
	s.mu.Unlock()
	s.track(c, spec, opts)
	s.cgroupCreated(id, spec)
	s.log.Info("container created", "id", id, "pid", initProc.pid, "vm_network", vmNetwork)
	return nil
}

// writeBundle makes the bundle directory, replacing one left over, and
// writes the spec into it.
func writeBundle(dir string, spec *specs.Spec) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, specFile), b, 0o600); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	return nil
}

// startedHalf is a failure after the runtime started the process, which
// the runtime may still have to clean up.
type startedHalf struct{ err error }

func (e startedHalf) Error() string { return e.err.Error() }
func (e startedHalf) Unwrap() error { return e.err }

// start runs the runtime (args: create or exec) with the process's stdio,
// and takes over the process it started: its pid, exit and stdio.
func (s *Sandbox) start(execID string, init, tty bool, args []string, pidFile string) (*process, error) {
	io, err := newStdio(tty)
	if err != nil {
		return nil, err
	}
	_, err = s.rt.run(args, io.child)
	io.closeChild()
	if err != nil {
		io.abort()
		return nil, err
	}
	p, err := s.takeOver(execID, init, io, pidFile)
	if err != nil {
		return nil, startedHalf{err}
	}
	return p, nil
}

// takeOver makes the process the runtime started, from its pid file.
func (s *Sandbox) takeOver(execID string, init bool, io *stdio, pidFile string) (*process, error) {
	pid, err := readPid(pidFile)
	if err != nil {
		io.abort()
		return nil, err
	}
	p, err := s.adopt(execID, pid, init, io)
	if err != nil {
		// It runs, but the agent cannot have it: end it.
		if kerr := reaper.Kill(pid, unix.SIGKILL); kerr != nil {
			s.log.Warn("end a process not taken over", "pid", pid, "err", kerr)
		}
		return nil, err
	}
	return p, nil
}

// adopt makes the process pid, which must have come to the agent, with
// its exit from the reaper and io.
func (s *Sandbox) adopt(execID string, pid int, init bool, io *stdio) (*process, error) {
	err := checkAdopted(pid)
	var exits <-chan reaper.Exit
	if err == nil {
		exits, err = claim(s.cfg.Reaper, pid, s.log)
	}
	if err != nil {
		io.abort()
		return nil, err
	}
	return newProcess(execID, pid, init, io, exits, s.log)
}

// deleteForce removes a container the runtime created but the agent
// could not take over.
func (s *Sandbox) deleteForce(id string) {
	if _, err := s.rt.run([]string{"delete", "--force", id}, nil); err != nil && !isNotFound(err) {
		s.log.Warn("undo create", "container", id, "err", err)
	}
}

// Start runs the created container's process.
func (s *Sandbox) Start(ctx context.Context, id string) error {
	if err := s.transition(id, "start", created, running); err != nil {
		return err
	}
	s.setStarted(id)
	return nil
}

// Exec starts proc in the running container, as execID.
func (s *Sandbox) Exec(ctx context.Context, id, execID string, proc *specs.Process) error {
	if err := checkID("container_id", id); err != nil {
		return err
	}
	if err := checkID("exec_id", execID); err != nil {
		return err
	}
	if execID == id {
		return fmt.Errorf("exec_id %q is the container's init process: %w", execID, errdefs.ErrAlreadyExists)
	}
	if proc == nil {
		return errdefs.InvalidArgument("process", "must be set")
	}
	if b := s.cfg.Bounds; b != nil {
		// The runtime gives an exec'd process the container's score,
		// whatever its process file says; that asks for no less all
		// the same.
		b.process(proc)
	}
	c, err := s.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	s.mu.Lock()
	err = c.status()
	if err == nil && c.state != running {
		err = fmt.Errorf("container %q is %v: %w", id, c.state, errdefs.ErrFailedPrecondition)
	}
	if p := c.procs[execID]; err == nil && p != nil && !p.waited {
		err = fmt.Errorf("process %q in container %q: %w", execID, id, errdefs.ErrAlreadyExists)
	}
	s.execSeq++
	base := filepath.Join(c.bundle, execPrefix+strconv.FormatUint(s.execSeq, 10))
	initPid := 0
	if c.init != nil {
		initPid = c.init.pid
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// A user by name, from the container's own files.
	if err := resolveExecUser(initPid, proc); err != nil {
		return err
	}
	procFile, pidFile := base+".json", base+".pid"
	defer os.Remove(procFile)
	defer os.Remove(pidFile)
	b, err := json.Marshal(proc)
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	if err := os.WriteFile(procFile, b, 0o600); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	args := []string{"exec", "--process", procFile, "--pid-file", pidFile}
	if proc.Terminal {
		args = append(args, "--terminal")
	}
	p, err := s.start(execID, false, proc.Terminal, append(args, id), pidFile)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if old := c.procs[execID]; old != nil {
		// Waited for, and its output not read to the end: the id is
		// the new process's now.
		old.release()
	}
	c.procs[execID] = p
	s.mu.Unlock()
	s.log.Debug("exec", "container", id, "exec_id", execID, "pid", p.pid)
	return nil
}

// Pause freezes the running container.
func (s *Sandbox) Pause(ctx context.Context, id string) error {
	return s.transition(id, "pause", running, paused)
}

// Resume thaws the paused container.
func (s *Sandbox) Resume(ctx context.Context, id string) error {
	return s.transition(id, "resume", paused, running)
}

// transition runs the runtime's verb on the container, which must be in
// state from, and records it in state to.
func (s *Sandbox) transition(id, verb string, from, to state) error {
	c, err := s.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	s.mu.Lock()
	err = c.status()
	if err == nil && c.state != from {
		err = fmt.Errorf("container %q is %v: %w", id, c.state, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if _, err := s.rt.run([]string{verb, id}, nil); err != nil {
		return err
	}
	s.mu.Lock()
	c.state = to
	s.mu.Unlock()
	return nil
}

// lockContainer finds the container and takes its op lock.
func (s *Sandbox) lockContainer(id string) (*container, error) {
	if err := checkID("container_id", id); err != nil {
		return nil, err
	}
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	c.op.Lock()
	// It may have been removed while this waited.
	s.mu.Lock()
	gone := s.containers[id] != c
	s.mu.Unlock()
	if gone {
		c.op.Unlock()
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// container finds a created container.
func (s *Sandbox) container(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.containers[id]
	if c == nil || c.state == creating {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}
