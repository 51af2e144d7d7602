package kata

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// The annotations the agent reads on a container's spec, beyond Kata's.
const (
	// AnnotationImage is the image a container was made from, for lists.
	AnnotationImage = "io.cabinvm.image"
	// AnnotationCreated is its creation time (RFC 3339), as its client
	// saw it; the agent's clock otherwise.
	AnnotationCreated = "io.cabinvm.created"
	// AnnotationLogs set to LogsKeep has the agent drain the init's
	// output and keep it (logkeep.go).
	AnnotationLogs = "io.cabinvm.logs"
	LogsKeep       = "keep"
	// AnnotationLogsMaxSize, with AnnotationLogs, is the most one of
	// the two files of the kept log holds, in bytes (a decimal number,
	// minLogFileMax to maxLogFileMax): the container keeps between that
	// and twice it of its latest output. logFileMax when not set.
	AnnotationLogsMaxSize = "io.cabinvm.logs.max-size"
	// AnnotationAutoremove set to "true" has the agent remove the
	// container once its init has exited and its output is drained
	// (kept) or read to the end and the exit waited for (not kept).
	AnnotationAutoremove = "io.cabinvm.autoremove"
)

// autoremoveTimeout bounds the wait for the processes left in a container
// being removed on its own: its init has exited, so what remains is
// killed, and a process SIGKILL does not end in this time is a stuck one.
const autoremoveTimeout = time.Minute

// ContainerState is where a container is, as lists show it.
type ContainerState int

const (
	StateCreated ContainerState = iota + 1
	StateRunning
	StatePaused
	StateStopped
)

// ContainerInfo is a container as List reports it.
type ContainerInfo struct {
	ID       string
	State    ContainerState
	Image    string
	Command  []string
	Created  time.Time
	Started  time.Time // zero before Start
	Finished time.Time // zero until the init exited
	// ExitCode is the init's exit code, 128+Signal for a signal; with
	// StateStopped.
	ExitCode   int
	Signal     int
	Pid        int // 0 once the init exited
	LogsKept   bool
	Autoremove bool
	TTY        bool
	// The init's environment, working directory and user: an exec's
	// defaults.
	Env      []string
	Cwd      string
	UID, GID uint32
}

// options are what a spec's annotations ask of the agent.
type options struct {
	image      string
	created    time.Time
	keepLogs   bool
	logMax     int64 // see AnnotationLogsMaxSize
	autoremove bool
}

// containerOptions reads and checks the annotations; a value the agent
// does not know is refused, rather than the container made without what
// its client meant.
func containerOptions(a map[string]string) (options, error) {
	o := options{image: a[AnnotationImage]}
	if len(o.image) > 4096 {
		return o, errdefs.InvalidArgument("OCI.Annotations["+AnnotationImage+"]", fmt.Sprintf("%d bytes; at most 4096", len(o.image)))
	}
	if v, ok := a[AnnotationCreated]; ok {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return o, errdefs.InvalidArgument("OCI.Annotations["+AnnotationCreated+"]", fmt.Sprintf("%q is not an RFC 3339 time", v))
		}
		o.created = t
	}
	switch v, ok := a[AnnotationLogs]; {
	case !ok:
	case v == LogsKeep:
		o.keepLogs = true
	default:
		return o, errdefs.InvalidArgument("OCI.Annotations["+AnnotationLogs+"]", fmt.Sprintf("%q: the only value is %q", v, LogsKeep))
	}
	o.logMax = logFileMax
	if v, ok := a[AnnotationLogsMaxSize]; ok {
		field := "OCI.Annotations[" + AnnotationLogsMaxSize + "]"
		if !o.keepLogs {
			return o, errdefs.InvalidArgument(field, fmt.Sprintf("only with %s=%s: the output is not kept", AnnotationLogs, LogsKeep))
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < minLogFileMax || n > maxLogFileMax {
			return o, errdefs.InvalidArgument(field, fmt.Sprintf("%q: want a number of bytes from %d to %d", v, minLogFileMax, maxLogFileMax))
		}
		o.logMax = n
	}
	switch v, ok := a[AnnotationAutoremove]; {
	case !ok, v == "false":
	case v == "true":
		o.autoremove = true
	default:
		return o, errdefs.InvalidArgument("OCI.Annotations["+AnnotationAutoremove+"]", fmt.Sprintf("%q: want true or false", v))
	}
	return o, nil
}

// tracked is what the agent records of a container for List and Logs,
// beyond what AgentService needs.
type tracked struct {
	image      string
	command    []string
	created    time.Time
	tty        bool
	autoremove bool
	env        []string
	cwd        string
	uid, gid   uint32
	// logs is nil unless the output is kept.
	logs *logKeeper

	mu       sync.Mutex
	started  time.Time
	finished time.Time
}

// track starts recording c, created with spec and o: the time its init
// exits, and with o.keepLogs its output. Called once Create has
// succeeded, before anything can start the container.
func (s *Sandbox) track(c *container, spec *specs.Spec, o options) {
	t := &tracked{
		image:      o.image,
		command:    slices.Clone(spec.Process.Args),
		created:    o.created,
		tty:        spec.Process.Terminal,
		autoremove: o.autoremove,
		env:        slices.Clone(spec.Process.Env),
		cwd:        spec.Process.Cwd,
		uid:        spec.Process.User.UID,
		gid:        spec.Process.User.GID,
	}
	if t.created.IsZero() {
		t.created = time.Now()
	}
	s.mu.Lock()
	p := c.init
	c.meta = t
	s.mu.Unlock()
	if o.keepLogs {
		lk, err := newLogKeeper(c.bundle, o.logMax)
		if err != nil {
			// The container runs all the same; its output stays in its
			// pipes for ReadStdout, as without the annotation.
			s.log.Warn("cannot keep the container's output", "id", c.id, "err", err)
		} else {
			t.logs = lk
		}
	}
	go s.watch(c, p, t)
}

// watch records the init's exit, drains its output when it is kept, and
// removes the container when it asked for that.
func (s *Sandbox) watch(c *container, p *process, t *tracked) {
	if t.logs != nil {
		var wg sync.WaitGroup
		wg.Go(func() { t.logs.drain(p.stdout, streamStdout) })
		if p.stderr != p.stdout {
			wg.Go(func() { t.logs.drain(p.stderr, streamStderr) })
		}
		<-p.guard.Done()
		t.setFinished()
		wg.Wait()
		t.logs.finish()
	} else {
		<-p.guard.Done()
		t.setFinished()
	}
	if t.autoremove && t.logs != nil {
		s.autoremove(c)
	}
}

func (t *tracked) setFinished() {
	t.mu.Lock()
	t.finished = time.Now()
	t.mu.Unlock()
}

// setStarted records the start; called once Start has succeeded.
func (s *Sandbox) setStarted(id string) {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil || c.meta == nil {
		return
	}
	c.meta.mu.Lock()
	c.meta.started = time.Now()
	c.meta.mu.Unlock()
}

// autoremove removes c if it is still the container of its id.
func (s *Sandbox) autoremove(c *container) {
	s.mu.Lock()
	same := s.containers[c.id] == c && !c.removing
	s.mu.Unlock()
	if !same {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), autoremoveTimeout)
	defer cancel()
	if err := s.Remove(ctx, c.id, 0); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		s.log.Warn("autoremove", "id", c.id, "err", err)
		return
	}
	s.log.Info("container removed at its exit", "id", c.id)
}

// forgotten is told that p, of c, has been waited for and its output read
// to the end: a container asking for autoremove without kept output goes
// then. Called with s.mu held.
func (s *Sandbox) forgotten(c *container, p *process) {
	if p.init && c.meta != nil && c.meta.autoremove && c.meta.logs == nil && !c.removing {
		go s.autoremove(c)
	}
}

// List lists the containers, in id order; those being created are left
// out.
func (s *Sandbox) List() []ContainerInfo {
	s.mu.Lock()
	var cs []*container
	for _, c := range s.containers {
		if c.state != creating {
			cs = append(cs, c)
		}
	}
	infos := make([]ContainerInfo, 0, len(cs))
	for _, c := range cs {
		infos = append(infos, c.info())
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].ID < infos[j].ID })
	return infos
}

// info describes c. Called with Sandbox.mu held.
func (c *container) info() ContainerInfo {
	in := ContainerInfo{ID: c.id, Pid: c.init.pid}
	switch c.state {
	case created:
		in.State = StateCreated
	case running:
		in.State = StateRunning
	case paused:
		in.State = StatePaused
	}
	if e, ok := c.init.guard.Exit(); ok {
		in.State, in.Pid = StateStopped, 0
		in.ExitCode, in.Signal = e.ShellCode(), int(e.Signal)
	}
	if t := c.meta; t != nil {
		in.Image, in.Command, in.Created = t.image, slices.Clone(t.command), t.created
		in.LogsKept, in.Autoremove, in.TTY = t.logs != nil, t.autoremove, t.tty
		in.Env, in.Cwd, in.UID, in.GID = slices.Clone(t.env), t.cwd, t.uid, t.gid
		t.mu.Lock()
		in.Started, in.Finished = t.started, t.finished
		t.mu.Unlock()
		if in.State == StateStopped && in.Finished.IsZero() {
			// The exit is known a moment before watch records it.
			in.Finished = time.Now()
		}
	}
	return in
}

// readable refuses ReadStdout and ReadStderr of an init whose output the
// agent keeps: the agent reads it, and a second reader would take bytes
// from the log.
func (s *Sandbox) readable(c *container, p *process) error {
	s.mu.Lock()
	kept := p.init && c.meta != nil && c.meta.logs != nil
	s.mu.Unlock()
	if kept {
		return fmt.Errorf("the output of container %q is kept by the agent (annotation %s=%s): read it with cabin.v1.Containers/Logs: %w",
			c.id, AnnotationLogs, LogsKeep, errdefs.ErrFailedPrecondition)
	}
	return nil
}
