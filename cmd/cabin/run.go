package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

type runOptions struct {
	execOptions
	rootfs  string
	id      string
	seccomp string
	// filter is --seccomp loaded; nil for none.
	filter *kata.LinuxSeccomp
}

// removeTimeout bounds the removal of the container on the way out, which
// runs even when cabin was interrupted: the agent kills what still runs.
const removeTimeout = 15 * time.Second

func newRunCmd(g *globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use: "run [-i] [-t] [-e K=V] [-w DIR] [-u UID[:GID]] [--rootfs NAME] [--name ID] VM [--] CMD [ARGS...]",
		Example: "  cabin run dev -- ps\n" +
			"  cabin run -it dev sh\n" +
			"  cabin run -e DEBUG=1 -w /tmp -u 1000 dev -- id",
		Short: "Run a command in a new container in a VM",
		Long: "run creates an OCI container in the VM, runs CMD as its process with the\n" +
			"output on cabin's own, removes the container, and exits with the command's\n" +
			"exit code. The container has its own namespaces (pid, mount, network with\n" +
			"only loopback, ipc, uts, cgroup) and a read-only root filesystem that cabind\n" +
			"builds (--rootfs, default busybox), with a tmpfs on /tmp, and a seccomp\n" +
			"filter (--seccomp). It is driven through the VM's Kata AgentService.\n" +
			"-i, -t, -e and -w work as for exec; -u takes UID or UID:GID.\n" +
			"Flags go before VM: everything after VM belongs to the command.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := vmCommandArgs(cmd, args); err != nil {
				return err
			}
			if err := checkRootfsName(o.rootfs); err != nil {
				return err
			}
			if err := o.check(); err != nil {
				return err
			}
			var err error
			if o.filter, err = loadSeccomp(o.seccomp); err != nil {
				return err
			}
			if o.id != "" {
				return checkContainerID(o.id)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runContainer(cmd, g, args[0], execArgv(args), o)
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&o.rootfs, "rootfs", bootcfg.RootfsBusybox, "root filesystem, one of those cabind builds")
	cmd.Flags().StringVar(&o.id, "name", "", "container name (default: a random one)")
	cmd.Flags().StringVar(&o.seccomp, "seccomp", seccompDefault, seccompFlagHelp)
	return cmd
}

// newContainerID is a random container name, unique enough that two cabin
// runs in one VM never meet.
func newContainerID() string {
	var b [6]byte
	rand.Read(b[:])
	return "run-" + hex.EncodeToString(b[:])
}

func runContainer(cmd *cobra.Command, g *globals, vm string, argv []string, o runOptions) error {
	tty, err := localTerminal(cmd, o.execOptions)
	if err != nil {
		return err
	}
	proc := process{cwd: o.workdir}
	if proc.env, err = o.environ(g.getenv, o.tty); err != nil {
		return err
	}
	if proc.uid, proc.gid, err = numericUser(o.user); err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	id := o.id
	if id == "" {
		id = newContainerID()
	}
	ctx, cancel := context.WithCancel(vmContext(cmd.Context(), g, vm))
	defer cancel()
	c := &container{agent: kata.NewAgentServiceClient(conn), ctx: ctx, id: id, vm: vm}

	var box *kata.Box
	if ws := windowSize(tty); ws != nil {
		box = &kata.Box{Height: ws.Rows, Width: ws.Cols}
	}
	_, err = c.agent.CreateContainer(ctx, &kata.CreateContainerRequest{
		ContainerId: id,
		ExecId:      id,
		Storages:    []*kata.Storage{rootfsStorage()},
		OCI:         containerSpec(id, o.rootfs, argv, box, o.filter, proc),
	})
	if err != nil {
		return fmt.Errorf("create container %s in %s: %w", id, vm, err)
	}
	defer c.remove(cmd.ErrOrStderr())

	sigs, restore, err := takeTerminal(tty, o.execOptions)
	if err != nil {
		return err
	}
	defer restore()
	if _, err := c.agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("start container %s in %s: %w", id, vm, err)
	}

	done := make(chan struct{})
	defer close(done)
	go c.forwardSignals(done, sigs, tty)
	if o.stdin {
		go c.copyStdin(cmd.InOrStdin())
	}
	var out sync.WaitGroup
	outErrs := make(chan error, 2)
	copyOut := func(read readFunc, w io.Writer) {
		defer out.Done()
		outErrs <- c.copyOutput(read, w)
	}
	out.Add(1)
	go copyOut(c.agent.ReadStdout, cmd.OutOrStdout())
	if tty == nil {
		out.Add(1)
		go copyOut(c.agent.ReadStderr, cmd.ErrOrStderr())
	}

	var trailer metadata.MD
	resp, err := c.agent.WaitProcess(ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: id}, grpc.Trailer(&trailer))
	if err != nil {
		return c.lost("wait for", err)
	}
	// The agent answers reads until the output is drained, then with no
	// data: everything the process wrote is shown before cabin exits.
	out.Wait()
	close(outErrs)
	for err := range outErrs {
		if err != nil {
			return err
		}
	}
	if code := exitStatus(resp.GetStatus(), trailer); code != 0 {
		return &remoteExitError{code: code}
	}
	return nil
}

// container is one cabin run's container, driven through AgentService.
type container struct {
	agent kata.AgentServiceClient
	ctx   context.Context
	id    string
	vm    string
}

type readFunc = func(context.Context, *kata.ReadStreamRequest, ...grpc.CallOption) (*kata.ReadStreamResponse, error)

// copyOutput copies one of the process's outputs to w until the agent
// answers a read with no data, which it does once the process has exited
// and that output is drained.
func (c *container) copyOutput(read readFunc, w io.Writer) error {
	req := &kata.ReadStreamRequest{ContainerId: c.id, ExecId: c.id, Len: uint32(32 << 10)}
	for {
		resp, err := read(c.ctx, req)
		if err != nil {
			return c.lost("read the output of", err)
		}
		if len(resp.GetData()) == 0 {
			return nil
		}
		if _, err := w.Write(resp.GetData()); err != nil {
			// cabin's own output is gone (| head): stop the process
			// rather than let it run with nobody reading.
			c.signal(syscall.SIGKILL)
			return fmt.Errorf("write output: %w", err)
		}
	}
}

// copyStdin sends r to the process and closes its stdin at r's end.
func (c *container) copyStdin(r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		for data := buf[:n]; len(data) > 0; {
			resp, werr := c.agent.WriteStdin(c.ctx, &kata.WriteStreamRequest{ContainerId: c.id, ExecId: c.id, Data: data})
			if werr != nil {
				// The process is gone or the connection is; the
				// wait reports which.
				return
			}
			data = data[min(int(resp.GetLen()), len(data)):]
		}
		if err != nil {
			_, _ = c.agent.CloseStdin(c.ctx, &kata.CloseStdinRequest{ContainerId: c.id, ExecId: c.id})
			return
		}
	}
}

func (c *container) forwardSignals(done <-chan struct{}, sigs <-chan os.Signal, tty *os.File) {
	for {
		select {
		case <-done:
			return
		case sig := <-sigs:
			switch sig {
			case syscall.SIGPIPE:
				// Caught only so a write to a closed output fails
				// with EPIPE; it is not the remote process's.
			case syscall.SIGWINCH:
				if ws := windowSize(tty); ws != nil {
					_, _ = c.agent.TtyWinResize(c.ctx, &kata.TtyWinResizeRequest{
						ContainerId: c.id, ExecId: c.id, Row: ws.Rows, Column: ws.Cols,
					})
				}
			default:
				if n, ok := sig.(syscall.Signal); ok {
					c.signal(n)
				}
			}
		}
	}
}

func (c *container) signal(sig syscall.Signal) {
	// An error means the process is gone or the connection is; the wait
	// reports which.
	_, _ = c.agent.SignalProcess(c.ctx, &kata.SignalProcessRequest{ContainerId: c.id, ExecId: c.id, Signal: uint32(sig)})
}

// remove removes the container, whatever became of the run: the agent
// kills what still runs in it. It has its own deadline, since the run's
// context may be what ended.
func (c *container) remove(stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), removeTimeout)
	defer cancel()
	_, err := c.agent.RemoveContainer(ctx, &kata.RemoveContainerRequest{ContainerId: c.id, Timeout: uint32(removeTimeout / time.Second)})
	if err != nil && status.Code(err) != codes.NotFound {
		fmt.Fprintf(stderr, "cabin: remove container %s in %s: %s\n", c.id, c.vm, errorMessage(err))
	}
}

// lost words an error from a call made while the container ran.
func (c *container) lost(what string, err error) error {
	if status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%s container %s in %s: the connection was lost: %s", what, c.id, c.vm, errorMessage(err))
	}
	return fmt.Errorf("%s container %s in %s: %w", what, c.id, c.vm, err)
}

// exitStatus is cabin's exit code for a container process's WaitProcess
// status: 128+signal for a process a signal killed, as a shell reports it
// (the agent's trailer tells; the status alone is the signal's number, as
// Kata's agent has it), else the status, or 255 where an exit code cannot
// hold it.
func exitStatus(status int32, trailer metadata.MD) int {
	if v := trailer.Get(kata.ExitSignalTrailer); len(v) == 1 {
		if sig, err := strconv.Atoi(v[0]); err == nil && sig > 0 && sig < 128 {
			return 128 + sig
		}
	}
	if status < 0 || status > 255 {
		return 255
	}
	return int(status)
}
