package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// cabin exec CONTAINER runs a process in a running container through
// Kata's ExecProcess, and stays with it as cabin run stays with a
// container's (container.attach): output, input, signals, resizes, exit
// status. A NAME that is no container of the caller's but one of its VMs
// runs in the VM itself, as cabin exec did before containers had verbs of
// their own, with a note that this is now cabin vm exec.

// containerExec is a process cabin exec starts in a running container.
type containerExec struct {
	id   string
	proc *kata.Process
}

// execID is the id of the process the container's calls are about: the
// init's (the container's id) unless an exec is.
func (c *container) execID() string {
	if c.exec != nil {
		return c.exec.id
	}
	return c.id
}

// startProcess starts the container's init, or the exec'd process.
func (c *container) startProcess() error {
	if c.exec == nil {
		if _, err := c.agent.StartContainer(c.ctx, &kata.StartContainerRequest{ContainerId: c.id}); err != nil {
			return fmt.Errorf("start container %s in %s: %w", c.id, c.vm, err)
		}
		return nil
	}
	_, err := c.agent.ExecProcess(c.ctx, &kata.ExecProcessRequest{ContainerId: c.id, ExecId: c.exec.id, Process: c.exec.proc})
	if err != nil {
		return fmt.Errorf("exec in container %s in %s: %w", c.id, c.vm, err)
	}
	return nil
}

// newExecID is a random exec id.
func newExecID() string {
	var b [6]byte
	rand.Read(b[:])
	return "exec-" + hex.EncodeToString(b[:])
}

// execEnv is the environment of a process exec'd into a container: the
// container's own (base, its init's, as List reports it) with -e's (env)
// over it, and a PATH when neither has one.
func execEnv(base []string, env map[string]string) []string {
	out := []string{}
	seen := map[string]bool{}
	for _, e := range base {
		k, _, _ := strings.Cut(e, "=")
		if seen[k] {
			continue
		}
		seen[k] = true
		if v, ok := env[k]; ok {
			e = k + "=" + v
		}
		out = append(out, e)
	}
	if _, ok := env["PATH"]; !ok && !seen["PATH"] {
		out = append(out, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if !seen[k] {
			out = append(out, k+"="+env[k])
		}
	}
	return out
}

// runExecAny runs cabin exec: in the container name, or failing one, in
// the VM name.
func runExecAny(cmd *cobra.Command, g *globals, vm, name string, argv []string, o execOptions) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	found, err := findContainer(cmd.Context(), conn, g, vm, name)
	var none *errNoContainer
	if errors.As(err, &none) && vm == "" {
		if v, verr := getVM(cmd.Context(), conn, g, name); verr == nil && v != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "cabin: %s is a VM, not a container: running the command in the VM; this is `cabin vm exec %s` now\n", name, name)
			return runExec(cmd, g, name, argv, o)
		}
	}
	if err != nil {
		return err
	}
	return execInContainer(cmd, g, found, argv, o)
}

func execInContainer(cmd *cobra.Command, g *globals, found *containersv1.Container, argv []string, o execOptions) error {
	if found.GetState() != containersv1.ContainerState_CONTAINER_STATE_RUNNING {
		return fmt.Errorf("container %s in %s is %s, not running", found.GetId(), found.GetVm(), containerState(found.GetState()))
	}
	tty, err := localTerminal(cmd, o)
	if err != nil {
		return err
	}
	env, err := o.environ(g.getenv, o.tty)
	if err != nil {
		return err
	}
	// The container's own environment, directory and user, as docker
	// exec starts from; -e, -w and -u over them.
	user := &kata.User{UID: found.GetUid(), GID: found.GetGid()}
	if o.user != "" {
		if user, err = execUser(o.user); err != nil {
			return err
		}
	}
	cwd := o.workdir
	if cwd == "" {
		cwd = found.GetCwd()
	}
	if cwd == "" {
		cwd = "/"
	}
	proc := &kata.Process{
		Args:         argv,
		Env:          execEnv(found.GetEnv(), env),
		Cwd:          cwd,
		User:         user,
		Terminal:     tty != nil,
		Capabilities: &kata.LinuxCapabilities{Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps},
		Rlimits:      []*kata.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		// As the init has: an exec is no way to more privileges.
		NoNewPrivileges: true,
	}
	if ws := windowSize(tty); ws != nil {
		proc.ConsoleSize = &kata.Box{Height: ws.Rows, Width: ws.Cols}
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(vmContext(cmd.Context(), g, found.GetVm()))
	defer cancel()
	c := &container{agent: kata.NewAgentServiceClient(conn), ctx: ctx, id: found.GetId(), vm: found.GetVm(),
		exec: &containerExec{id: newExecID(), proc: proc}}
	return c.attach(cmd, tty, runOptions{execOptions: o})
}

// execUser is exec's -u: UID or UID:GID as numbers, or a name (NAME,
// NAME:GROUP, UID:GROUP), which the agent resolves against the
// container's own /etc/passwd and /etc/group, as docker exec does.
func execUser(u string) (*kata.User, error) {
	if u == "" {
		return &kata.User{}, nil
	}
	if strings.ContainsAny(u, "\x00\n") || strings.Count(u, ":") > 1 || strings.HasPrefix(u, ":") || strings.HasSuffix(u, ":") {
		return nil, usagef("-u %q: want NAME, UID, NAME:GROUP or UID:GID", u)
	}
	us, gs, hasGroup := strings.Cut(u, ":")
	uid, uerr := strconv.ParseUint(us, 10, 32)
	gid, gerr := strconv.ParseUint(gs, 10, 32)
	if uerr == nil && (!hasGroup || gerr == nil) {
		return &kata.User{UID: uint32(uid), GID: uint32(gid)}, nil
	}
	return &kata.User{Username: u}, nil
}
