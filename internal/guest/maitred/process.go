package maitred

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// Status is how a launch turned out.
type Status int

const (
	// Launched: the process started and is not waited for.
	Launched Status = iota + 1
	// Exited: the process exited with Outcome.Code.
	Exited
	// Signaled: the process was killed by signal Outcome.Code.
	Signaled
	// Failed: the process could not be started.
	Failed
)

// Process is a process to launch.
type Process struct {
	// Argv[0] is an absolute path or a name looked up in PATH.
	Argv []string
	// Env is added to the agent's environment.
	Env map[string]string
	// Respawn restarts the process whenever it exits.
	Respawn bool
	// UseConsole gives it /dev/console for stdio, else /dev/null.
	UseConsole bool
	// WaitForExit makes Launch wait for the process and report its exit.
	WaitForExit bool
}

// Outcome is what Launch reports: a launch that fails is an outcome, not
// an error.
type Outcome struct {
	Status Status
	// Code is the exit code (Exited) or the signal number (Signaled).
	Code int
}

// Launch starts p. Errors are for bad requests only; a process that cannot
// start is reported as Failed.
func (m *Maitred) Launch(ctx context.Context, p Process) (Outcome, error) {
	if len(p.Argv) == 0 {
		return Outcome{}, errdefs.InvalidArgument("argv", "must not be empty")
	}
	if p.Respawn && p.WaitForExit {
		return Outcome{}, errdefs.InvalidArgument("respawn", "cannot be combined with wait_for_exit")
	}
	exits, err := m.start(p)
	if err != nil {
		m.log.Warn("launch failed", "argv", p.Argv, "err", err)
		return Outcome{Status: Failed}, nil
	}
	m.log.Debug("launched", "argv", p.Argv, "respawn", p.Respawn)
	switch {
	case p.Respawn:
		m.supervise(p, exits)
		return Outcome{Status: Launched}, nil
	case !p.WaitForExit:
		// The reaper's channel is buffered: nobody needs to read it.
		return Outcome{Status: Launched}, nil
	}
	select {
	case e := <-exits:
		if e.Signal != 0 {
			return Outcome{Status: Signaled, Code: int(e.Signal)}, nil
		}
		return Outcome{Status: Exited, Code: e.Code}, nil
	case <-ctx.Done():
		return Outcome{}, ctx.Err()
	}
}

// start starts p once and returns where its exit will be delivered.
func (m *Maitred) start(p Process) (<-chan reaper.Exit, error) {
	if name := p.Argv[0]; strings.ContainsRune(name, '/') && !filepath.IsAbs(name) {
		return nil, fmt.Errorf("%q: not an absolute path or a name to look up in PATH", name)
	}
	stdio, err := m.openStdio(p.UseConsole)
	if err != nil {
		return nil, err
	}
	// The child has its own copy once started.
	defer stdio.Close()
	cmd := exec.Command(p.Argv[0], p.Argv[1:]...)
	cmd.Env = environ(p.Env)
	// Only *os.File, so exec.Cmd starts no copying goroutines that would
	// need Wait, which the reaper owns.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio, stdio, stdio
	// A session of its own: the agent's signals and terminal are not its.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	_, exits, err := m.cfg.Reaper.StartCmd(cmd)
	return exits, err
}

func (m *Maitred) openStdio(console bool) (*os.File, error) {
	name := os.DevNull
	if console {
		name = m.cfg.Console
	}
	// O_NOCTTY: as a session leader the agent would otherwise take the
	// console as its controlling terminal.
	f, err := os.OpenFile(name, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open stdio: %w", err)
	}
	return f, nil
}

func environ(extra map[string]string) []string {
	env := os.Environ()
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = append(env, k+"="+extra[k])
	}
	return env
}

// supervise keeps p running until it respawns too often or Maitred stops.
func (m *Maitred) supervise(p Process, exits <-chan reaper.Exit) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return // stopping: launched once, not kept alive
	}
	m.respawners.Add(1)
	go func() {
		defer m.respawners.Done()
		m.respawn(p, exits)
	}()
}

func (m *Maitred) respawn(p Process, exits <-chan reaper.Exit) {
	limit, window := m.cfg.RespawnLimit, m.cfg.RespawnWindow
	// spawns holds the times of the last limit spawns, oldest first.
	spawns := make([]time.Time, 0, limit)
	spawns = append(spawns, m.cfg.Now())
	for {
		var e reaper.Exit
		select {
		case e = <-exits:
		case <-m.done:
			return
		}
		select {
		case <-m.done:
			return // the exit may be the power-off's doing
		default:
		}
		now := m.cfg.Now()
		if len(spawns) == limit && now.Sub(spawns[0]) < window {
			m.log.Warn("process respawns too often; stopped until launched again",
				"argv", p.Argv, "spawns", limit, "within", window, "last", e.String())
			return
		}
		m.log.Debug("respawning", "argv", p.Argv, "last", e.String())
		var err error
		if exits, err = m.start(p); err != nil {
			m.log.Warn("respawn failed; stopped until launched again", "argv", p.Argv, "err", err)
			return
		}
		if len(spawns) == limit {
			spawns = slices.Delete(spawns, 0, 1)
		}
		spawns = append(spawns, now)
	}
}
