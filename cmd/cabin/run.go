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

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The annotations cabin run sets on a container's spec, which the agent
// reads (internal/guest/kata: list.go, user.go).
const (
	kataAnnotationImage      = "io.cabinvm.image"
	kataAnnotationCreated    = "io.cabinvm.created"
	kataAnnotationLogs       = "io.cabinvm.logs"
	kataAnnotationLogsMax    = "io.cabinvm.logs.max-size"
	kataAnnotationAutoremove = "io.cabinvm.autoremove"
	kataAnnotationUser       = "io.cabinvm.user"
)

type runOptions struct {
	execOptions
	vm         string
	rootfs     string
	id         string
	detach     bool
	rm         bool
	entrypoint string
	mounts     []string
	memory     string
	logMax     string
	cpus       float64
	seccomp    string
	// builtin is set by the old form: ref names a root cabind builds.
	builtin bool
	// filter is --seccomp loaded; nil for none.
	filter *kata.LinuxSeccomp
}

// removeTimeout bounds the removal of the container on the way out, which
// runs even when cabin was interrupted: the agent kills what still runs.
const removeTimeout = 15 * time.Second

func newRunCmd(g *globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use: "run [--vm NAME] [--name ID] [-d] [--rm] [-i] [-t] [-e K=V] [--mount SRC:DST[:ro]] [--memory M] [--cpus N] [-u USER] [-w DIR] IMAGE [CMD [ARGS...]]",
		Example: "  cabin run busybox echo hello\n" +
			"  cabin run -it --rm alpine sh\n" +
			"  cabin run -d --name web --vm dev --memory 256M nginx\n" +
			"  cabin run --vm dev --mount ~/src:/src:ro -w /src golang go test ./...",
		Short: "Run a command in a new container of an image",
		Long: "run creates an OCI container of IMAGE (an image of cabind's store, see cabin\n" +
			"image; or busybox, the root cabind builds) in the VM --vm, default \"default\",\n" +
			"which is started first when it does not run. The process is the image's\n" +
			"entrypoint and cmd, CMD replacing the cmd (and --entrypoint the entrypoint),\n" +
			"with the image's env, user and working dir unless -e, -u, -w say otherwise,\n" +
			"as docker run does; -u NAME is looked up in the image's /etc/passwd.\n" +
			"The container's root is its own writable layer (a tmpfs, half of --memory\n" +
			"or a quarter of the VM's RAM) over the image, which every container of the\n" +
			"image shares read-only. It has its own namespaces (network: loopback only)\n" +
			"and a seccomp filter (--seccomp). Without -d, run shows its output, passes\n" +
			"signals on and exits with its exit code; the container is kept once it\n" +
			"exits, unless --rm. With -d it prints the container's id and returns, the\n" +
			"guest keeping its output (cabin logs). --mount binds a host path that is in\n" +
			"one of the VM's shares (cabin vm start --share). --memory and --cpus are\n" +
			"the container's cgroup limits.\n" +
			"The old form, cabin run VM -- CMD, still runs CMD in busybox in VM and\n" +
			"removes the container at its end.\n" +
			"Flags go before IMAGE: everything after IMAGE belongs to the command.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "" {
				return usagef("%s needs an image", verb(cmd))
			}
			if err := checkRootfsName(o.rootfs); err != nil {
				return err
			}
			if err := o.check(); err != nil {
				return err
			}
			if o.detach && o.stdin {
				return usagef("-d and -i: a detached container's standard input is not kept open")
			}
			if o.logMax != "" && !o.detach {
				return usagef("--log-max-size is for -d: only a detached container's output is kept")
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
			if len(args) > 1 && args[1] == "--" {
				// The old form: VM -- CMD, busybox, removed at its end.
				if cmd.Flags().Changed("vm") {
					return usagef("--vm with the old form VM -- CMD: give one or the other")
				}
				if len(args) < 3 {
					return usagef("%s needs a command to run in %s", verb(cmd), args[0])
				}
				o.vm, o.rm, o.builtin = args[0], true, true
				return runContainer(cmd, g, o.rootfs, args[2:], o)
			}
			return runContainer(cmd, g, args[0], args[1:], o)
		},
	}
	o.addFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.vm, "vm", defaultVM, "the VM to run the container in; \"default\" is started when it does not run")
	f.StringVar(&o.id, "name", "", "container name (default: a random one)")
	f.BoolVarP(&o.detach, "detach", "d", false, "run in the background: print the container's id and return")
	f.BoolVar(&o.rm, "rm", false, "remove the container when its process exits")
	f.StringVar(&o.entrypoint, "entrypoint", "", "replace the image's entrypoint (\"\" for none); the image's cmd goes too")
	f.StringArrayVar(&o.mounts, "mount", nil, "bind SRC (a host path in one of the VM's shares) on DST: SRC:DST[:ro] (repeatable)")
	f.StringVarP(&o.memory, "memory", "m", "", "the container's memory limit: 512M, 2G, or bytes (default: the agent's bound)")
	f.Float64Var(&o.cpus, "cpus", 0, "the container's CPU quota, in CPUs (1.5: one and a half)")
	f.StringVar(&o.logMax, "log-max-size", "", "with -d: the most each of the kept log's two files holds, 64K to 64M (default 1M): the VM keeps between that and twice it of the output")
	f.StringVar(&o.rootfs, "rootfs", bootcfg.RootfsBusybox, "root filesystem of the old form VM -- CMD, one of those cabind builds")
	f.StringVar(&o.seccomp, "seccomp", seccompDefault, seccompFlagHelp)
	_ = f.MarkHidden("rootfs")
	return cmd
}

// newContainerID is a random container name, unique enough that two cabin
// runs in one VM never meet.
func newContainerID() string {
	var b [6]byte
	rand.Read(b[:])
	return "run-" + hex.EncodeToString(b[:])
}

func runContainer(cmd *cobra.Command, g *globals, ref string, cmdArgs []string, o runOptions) error {
	memory, err := parseMemory(o.memory)
	if err != nil {
		return err
	}
	logMax, err := parseLogMax(o.logMax)
	if err != nil {
		return err
	}
	if err := checkCPUs(o.cpus, 0); err != nil {
		return err
	}
	var binds []mountSpec
	for _, v := range o.mounts {
		m, err := parseMount(v)
		if err != nil {
			return err
		}
		binds = append(binds, m)
	}
	tty, err := localTerminal(cmd, o.execOptions)
	if err != nil {
		return err
	}
	env, err := o.environ(g.getenv, o.tty)
	if err != nil {
		return err
	}
	id := o.id
	if id == "" {
		id = newContainerID()
	}
	var entrypoint *string
	if cmd.Flags().Changed("entrypoint") {
		entrypoint = &o.entrypoint
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()

	img := runImage{ref: ref, builtin: ref}
	if !o.builtin {
		img, err = findImage(ctx, conn, ref, func(name string) bool {
			v, err := getVM(ctx, conn, g, name)
			return err == nil && v != nil
		})
		if err != nil {
			return err
		}
	}
	var vm *cabinv1.Vm
	if o.vm == defaultVM {
		if vm, err = ensureDefaultVM(cmd, g, conn); err != nil {
			return err
		}
	} else if len(binds) > 0 || o.cpus > 0 {
		if vm, err = getVM(ctx, conn, g, o.vm); err != nil {
			return err
		}
	}
	if err := checkCPUs(o.cpus, vm.GetCpus()); err != nil {
		return err
	}
	mounts, err := bindMounts(binds, vm, o.vm)
	if err != nil {
		return err
	}
	proc, err := planProcess(img.config, cmdArgs, entrypoint, env, o.workdir, o.user, id, tty != nil)
	if err != nil {
		return err
	}
	annotations := map[string]string{
		kataAnnotationImage:   img.ref,
		kataAnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano),
		kataAnnotationUser:    proc.user,
	}
	if o.detach {
		annotations[kataAnnotationLogs] = "keep"
		if logMax > 0 {
			annotations[kataAnnotationLogsMax] = strconv.FormatUint(logMax, 10)
		}
		if o.rm {
			annotations[kataAnnotationAutoremove] = "true"
		}
	}
	var box *kata.Box
	if ws := windowSize(tty); ws != nil {
		box = &kata.Box{Height: ws.Rows, Width: ws.Cols}
	}
	ctx, cancel := context.WithCancel(vmContext(ctx, g, o.vm))
	defer cancel()
	c := &container{agent: kata.NewAgentServiceClient(conn), ctx: ctx, id: id, vm: o.vm}
	_, err = c.agent.CreateContainer(ctx, &kata.CreateContainerRequest{
		ContainerId: id,
		ExecId:      id,
		Storages:    containerStorages(img, id, memory),
		OCI: containerSpec(specInput{id: id, proc: proc, term: box, filter: o.filter, mounts: mounts,
			memory: memory, cpus: o.cpus, annotations: annotations}),
	})
	if err != nil {
		return fmt.Errorf("create container %s in %s: %w", id, o.vm, err)
	}
	if o.detach {
		if _, err := c.agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
			c.remove(cmd.ErrOrStderr())
			return fmt.Errorf("start container %s in %s: %w", id, o.vm, err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), id)
		return nil
	}
	if o.rm {
		defer c.remove(cmd.ErrOrStderr())
	}
	return c.attach(cmd, tty, o)
}

// attach starts the container and stays with its process: output shown,
// input and signals passed on, its exit status cabin's.
func (c *container) attach(cmd *cobra.Command, tty *os.File, o runOptions) error {
	sigs, restore, err := takeTerminal(tty, o.execOptions)
	if err != nil {
		return err
	}
	defer restore()
	if err := c.startProcess(); err != nil {
		return err
	}
	id, eid := c.id, c.execID()

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
	resp, err := c.agent.WaitProcess(c.ctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: eid}, grpc.Trailer(&trailer))
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
	// exec, when set, is the process attach starts in the running
	// container (cabin exec CONTAINER), rather than the container itself.
	exec *containerExec
}

type readFunc = func(context.Context, *kata.ReadStreamRequest, ...grpc.CallOption) (*kata.ReadStreamResponse, error)

// copyOutput copies one of the process's outputs to w until the agent
// answers a read with no data, which it does once the process has exited
// and that output is drained.
func (c *container) copyOutput(read readFunc, w io.Writer) error {
	req := &kata.ReadStreamRequest{ContainerId: c.id, ExecId: c.execID(), Len: uint32(32 << 10)}
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
			resp, werr := c.agent.WriteStdin(c.ctx, &kata.WriteStreamRequest{ContainerId: c.id, ExecId: c.execID(), Data: data})
			if werr != nil {
				// The process is gone or the connection is; the
				// wait reports which.
				return
			}
			data = data[min(int(resp.GetLen()), len(data)):]
		}
		if err != nil {
			_, _ = c.agent.CloseStdin(c.ctx, &kata.CloseStdinRequest{ContainerId: c.id, ExecId: c.execID()})
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
						ContainerId: c.id, ExecId: c.execID(), Row: ws.Rows, Column: ws.Cols,
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
	_, _ = c.agent.SignalProcess(c.ctx, &kata.SignalProcessRequest{ContainerId: c.id, ExecId: c.execID(), Signal: uint32(sig)})
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
