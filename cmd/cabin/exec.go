package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	"github.com/cabinvm/cabin/internal/relay"
)

type execOptions struct {
	stdin bool
	tty   bool
	processFlags
}

func newExecCmd(g *globals) *cobra.Command {
	var o execOptions
	var vm string
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [-e K=V] [-w DIR] [-u USER[:GROUP]] [--vm NAME] CONTAINER [--] CMD [ARGS...]",
		Short: "Run a command in a running container",
		Long: "exec runs CMD in the running container CONTAINER (one of ps's, found in\n" +
			"whichever of your running VMs has it; --vm when more than one does) with\n" +
			"its output on cabin's own, and exits with the command's exit code, 128+N\n" +
			"for a command signal N killed. -i passes standard input through; -t runs it\n" +
			"on a terminal of the local one's size, with resizes forwarded, and with -i\n" +
			"too puts the local terminal in raw mode. SIGINT, SIGTERM and SIGHUP sent to\n" +
			"cabin are passed on to the command. -u takes a user and group by name or\n" +
			"number, looked up in the container's own /etc/passwd and /etc/group\n" +
			"(default: the container's user). The environment and working directory are\n" +
			"the container's, with -e's and -w over them. With -t the local TERM is\n" +
			"passed on.\n" +
			"A CONTAINER that is no container of yours but one of your VMs runs CMD in\n" +
			"the VM itself, with a note: that is `cabin vm exec` now.\n" +
			"Flags go before CONTAINER: everything after it belongs to the command.",
		Example: "  cabin exec web -- ls /\n" +
			"  cabin exec -it web sh\n" +
			"  cabin exec --vm dev -e DEBUG=1 -u 1000 web -- id\n" +
			"  cabin exec -u nobody:nogroup web -- id",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "" {
				return usagef("%s needs a container and a command", verb(cmd))
			}
			if len(execArgv(args)) == 0 {
				return usagef("%s needs a command to run in %s", verb(cmd), args[0])
			}
			if err := checkVMFlag(vm); err != nil {
				return err
			}
			return o.check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExecAny(cmd, g, vm, args[0], execArgv(args), o)
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&vm, "vm", "", "the VM the container is in, when more than one has one of its id")
	return cmd
}

func newVMExecCmd(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] NAME [--] CMD [ARGS...]",
		Short: "Run a command in a VM",
		Long: "vm exec runs CMD in the VM NAME itself (not in a container) with its output\n" +
			"on cabin's own, and exits with the command's exit code. -i passes standard\n" +
			"input through; -t runs it on a terminal of the local one's size, with resizes\n" +
			"forwarded, and with -i too puts the local terminal in raw mode, so keys like\n" +
			"Ctrl-C go to the command as input. SIGINT, SIGTERM and SIGHUP sent to cabin\n" +
			"are passed on to the command. If cabin's output is a pipe that its reader\n" +
			"closes, cabin exits with status 141, as if killed by SIGPIPE. A command that\n" +
			"is not found exits 127, one that cannot be run 126, as in a shell. With -t\n" +
			"the local TERM is passed on.\n" +
			"Flags go before NAME: everything after NAME belongs to the command.",
		Example: "  cabin vm exec dev -- uname -a\n" +
			"  cabin vm exec -it dev sh\n" +
			"  cabin vm exec -w /tmp -e DEBUG=1 -u 1000 dev -- ls -l",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := vmCommandArgs(cmd, args); err != nil {
				return err
			}
			return o.check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExec(cmd, g, args[0], execArgv(args), o)
		},
	}
	o.addFlags(cmd)
	return cmd
}

// vmCommandArgs checks the arguments of a verb that runs a command in a
// VM: NAME [--] CMD [ARGS...].
func vmCommandArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 || args[0] == "" {
		return usagef("%s needs a VM name and a command", verb(cmd))
	}
	if len(execArgv(args)) == 0 {
		return usagef("%s needs a command to run in %s", verb(cmd), args[0])
	}
	return nil
}

// addFlags adds -i and -t to cmd, and has its flags stop at NAME, so that
// the command's own flags (ls -l) are not taken for cabin's and "--" is
// optional.
func (o *execOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&o.stdin, "interactive", "i", false, "pass standard input to the command")
	cmd.Flags().BoolVarP(&o.tty, "tty", "t", false, "run the command on a terminal (standard input must be one)")
	o.processFlags.add(cmd.Flags())
}

// execArgv is the command after NAME, without the "--" that may separate
// them.
func execArgv(args []string) []string {
	rest := args[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	return rest
}

// execSender serializes sends: a gRPC stream allows one sender at a time,
// and stdin, signals and resizes each have their own goroutine.
type execSender struct {
	mu     sync.Mutex
	stream execv1.Exec_ExecClient
}

func (s *execSender) send(req *execv1.ExecRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.Send(req)
}

func runExec(cmd *cobra.Command, g *globals, name string, argv []string, o execOptions) error {
	tty, err := localTerminal(cmd, o)
	if err != nil {
		return err
	}
	env, err := o.environ(g.getenv, o.tty)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(vmContext(cmd.Context(), g, name))
	defer cancel()
	stream, err := execv1.NewExecClient(conn).Exec(ctx)
	if err != nil {
		return fmt.Errorf("exec in %s: %w", name, err)
	}
	s := &execSender{stream: stream}

	start := &execv1.ExecStart{Argv: argv, Tty: o.tty, Stdin: o.stdin, Env: env, Cwd: o.workdir, User: o.user}
	if tty != nil {
		start.Window = windowSize(tty)
	}

	// Before the start message goes out, so no signal meant for the remote
	// process kills cabin instead.
	sigs, restore, err := takeTerminal(tty, o)
	if err != nil {
		return err
	}
	// Deferred, so every return below restores the terminal; report
	// prints the error only after this function has returned.
	defer restore()
	done := make(chan struct{})
	defer close(done)

	// A failed send means the stream is over; Recv below says why.
	if err := s.send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("exec in %s: %w", name, err)
	}
	go forwardSignals(done, sigs, s, tty)
	if o.stdin {
		go copyStdin(cmd.InOrStdin(), s)
	}
	return receiveExec(stream, name, cmd.OutOrStdout(), cmd.ErrOrStderr())
}

// receiveExec copies the process's output until its exit status arrives.
func receiveExec(stream execv1.Exec_ExecClient, name string, stdout, stderr io.Writer) error {
	for started := false; ; started = true {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("exec in %s: the stream ended without an exit status", name)
		}
		if err != nil && started && status.Code(err) == codes.Unavailable {
			// Not "cannot reach cabind" (report's guess for Unavailable
			// when the socket is gone): it was reached, and the command
			// began, so the user learns what became of it: the agent
			// kills a process whose stream ends. The status is not
			// wrapped, so report does not guess.
			return fmt.Errorf("exec in %s: the connection was lost while the command ran, which stops it: %s",
				name, errorMessage(err))
		}
		if err != nil {
			if v := stream.Trailer().Get(execv1.StartFailedTrailer); !started && len(v) == 1 && (v[0] == "126" || v[0] == "127") {
				code := 126
				if v[0] == "127" {
					code = 127
				}
				return &startFailedError{code: code, err: fmt.Errorf("exec in %s: %w", name, err)}
			}
			return fmt.Errorf("exec in %s: %w", name, err)
		}
		switch k := resp.GetKind().(type) {
		case *execv1.ExecResponse_Stdout:
			if _, err := stdout.Write(k.Stdout); err != nil {
				return fmt.Errorf("write standard output: %w", err)
			}
		case *execv1.ExecResponse_Stderr:
			if _, err := stderr.Write(k.Stderr); err != nil {
				return fmt.Errorf("write standard error: %w", err)
			}
		case *execv1.ExecResponse_Exit:
			if code := exitCode(k.Exit); code != 0 {
				return &remoteExitError{code: code}
			}
			return nil
		}
	}
}

// exitCode is the exit code cabin passes on for the remote status. Codes
// are passed unchanged where a process exit code can hold them (0–255);
// anything else becomes 255 rather than wrapping around, possibly to 0.
func exitCode(st *execv1.ExitStatus) int {
	code := int(st.GetCode())
	if code == 0 && st.GetSignal() != 0 {
		// The daemon should have done this already; a killed process
		// must not look successful.
		code = 128 + int(st.GetSignal())
	}
	if code < 0 || code > 255 {
		return 255
	}
	return code
}

func forwardSignals(done <-chan struct{}, sigs <-chan os.Signal, s *execSender, tty *os.File) {
	for {
		select {
		case <-done:
			return
		case sig := <-sigs:
			var req *execv1.ExecRequest
			if sig == syscall.SIGPIPE {
				// Caught only to learn of a broken pipe by EPIPE; it
				// is about cabin's output, not the remote process.
				continue
			} else if sig == syscall.SIGWINCH {
				ws := windowSize(tty)
				if ws == nil {
					continue
				}
				req = &execv1.ExecRequest{Kind: &execv1.ExecRequest_Resize{Resize: ws}}
			} else if n, ok := sig.(syscall.Signal); ok {
				// Host and guest are both Linux: the numbers agree.
				req = &execv1.ExecRequest{Kind: &execv1.ExecRequest_Signal{Signal: int32(n)}}
			} else {
				continue
			}
			// An error means the stream is over; the receiver reports it.
			_ = s.send(req)
		}
	}
}

// copyStdin sends r to the process and closes its stdin at the end of r.
func copyStdin(r io.Reader, s *execSender) {
	buf := make([]byte, execv1.MaxChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			// Send marshals before returning, so buf can be reused.
			if s.send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: buf[:n]}}) != nil {
				return
			}
		}
		if err != nil {
			// EOF or a read error: either way no more input will come.
			_ = s.send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_CloseStdin{CloseStdin: &execv1.CloseStdin{}}})
			return
		}
	}
}

// vmContext is ctx with the metadata that makes cabind relay a call to the
// agent of the VM name (of --owner's VMs).
func vmContext(ctx context.Context, g *globals, name string) context.Context {
	md := []string{relay.MetadataVM, name}
	if g.owner != "" {
		md = append(md, relay.MetadataOwner, g.owner)
	}
	return metadata.AppendToOutgoingContext(ctx, md...)
}

// localTerminal is standard input when -t asks for a terminal, nil without
// -t, and an error when -t is given and standard input is not a terminal.
func localTerminal(cmd *cobra.Command, o execOptions) (*os.File, error) {
	if !o.tty {
		return nil, nil
	}
	f, ok := cmd.InOrStdin().(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, errors.New("-t needs standard input to be a terminal, and it is not one; run without -t (add -i to pass input through)")
	}
	return f, nil
}

// takeTerminal catches the signals that go to the remote process (and
// SIGWINCH with a terminal), and with -it puts the local terminal in raw
// mode. The signals are caught first, so no signal kills cabin while the
// terminal is raw: cabin must live to restore it. restore undoes both.
func takeTerminal(tty *os.File, o execOptions) (sigs chan os.Signal, restore func(), err error) {
	sigs = make(chan os.Signal, 8)
	caught := []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
	if tty != nil {
		caught = append(caught, syscall.SIGWINCH)
	}
	raw := tty != nil && o.stdin
	if raw {
		// Unless SIGPIPE is caught, Go kills a program whose write to a
		// closed pipe on fd 1 or 2 fails (cabin exec -it vm -- yes | head).
		// Caught, the write returns EPIPE, the output copy returns, the
		// restore runs, and report turns EPIPE into status 141.
		caught = append(caught, syscall.SIGPIPE)
	}
	signal.Notify(sigs, caught...)
	if !raw {
		return sigs, func() { signal.Stop(sigs) }, nil
	}
	// Only with -i: raw mode turns off the terminal's own handling of
	// Ctrl-C and the like, which is right when those keys are read and
	// sent to the remote terminal, and wrong when nothing reads them.
	old, err := term.MakeRaw(int(tty.Fd()))
	if err != nil {
		signal.Stop(sigs)
		return nil, nil, fmt.Errorf("put the terminal in raw mode: %w", err)
	}
	return sigs, func() {
		term.Restore(int(tty.Fd()), old)
		signal.Stop(sigs)
	}, nil
}

// windowSize is the terminal's size, or nil when it cannot be read.
func windowSize(tty *os.File) *execv1.WindowSize {
	if tty == nil {
		return nil
	}
	cols, rows, err := term.GetSize(int(tty.Fd()))
	if err != nil {
		return nil
	}
	return &execv1.WindowSize{Rows: uint32(rows), Cols: uint32(cols)}
}
