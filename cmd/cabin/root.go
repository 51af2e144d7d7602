package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/internal/client"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/version"
)

// socketEnv overrides statedir.DefaultSocket, so scripts and tests need
// not repeat --socket on every call.
const socketEnv = "CABIN_SOCKET"

// globals are the flags every verb shares. One value is made per command
// tree, so tests get fresh ones.
type globals struct {
	socket string
	owner  string
	// getenv reads cabin's environment (TERM, exec -e NAME).
	getenv func(string) string
}

// run builds a fresh command tree, runs it on args and turns the outcome
// into the process's exit code. It is main without the process: tests call
// it with their own streams and environment.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	g := &globals{getenv: getenv}
	root := newRootCmd(g, getenv)
	if args == nil {
		// cobra reads os.Args when given nil.
		args = []string{}
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	return report(stderr, cmd, err, g.socket)
}

func newRootCmd(g *globals, getenv func(string) string) *cobra.Command {
	socket := getenv(socketEnv)
	if socket == "" {
		socket = statedir.DefaultSocket
	}
	root := &cobra.Command{
		Use:   "cabin",
		Short: "Run and manage cabin microVMs through cabind",
		Long: "cabin drives cabind, the cabin host daemon, over its unix socket: it starts\n" +
			"and stops microVMs, runs commands in them and follows their events.",
		// Errors are printed once, by report, with cabin's own prefix and
		// exit codes; usage text only on request.
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          groupArgs,
		RunE:          showHelp,
		Version:       version.Version,
	}
	root.SetVersionTemplate("cabin {{.Version}}\n")
	root.PersistentFlags().StringVar(&g.socket, "socket", socket, "cabind's unix socket; $"+socketEnv+" sets the default")
	root.PersistentFlags().StringVar(&g.owner, "owner", "", "owner id of the VMs to act on")
	// Flag parse errors are the user's to fix: exit 2, like other usage errors.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })

	vm := &cobra.Command{
		Use:   "vm",
		Short: "Start, stop and inspect VMs",
		Args:  groupArgs,
		RunE:  showHelp,
	}
	vm.AddCommand(
		newVMStartCmd(g),
		newVMStopCmd(g),
		newVMRmCmd(g),
		newVMPruneCmd(g),
		newVMListCmd(g),
		newVMInfoCmd(g),
		newVMLogsCmd(g),
		newVMForwardCmd(g),
		newVMNetCmd(g),
		newVMUSBCmd(g),
		newVMSuspendCmd(g),
		newVMResumeCmd(g),
		newVMCPUCmd(g),
		newVMBalloonCmd(g),
		newVMAdjustCmd(g),
		newVMExecCmd(g),
	)
	image := &cobra.Command{
		Use:   "image",
		Short: "Manage the guest image cabind boots and the OCI images containers run",
		Args:  groupArgs,
		RunE:  showHelp,
	}
	image.AddCommand(newImageBuildCmd(g), newImageImportCmd(g), newImagePullCmd(g), newImageListCmd(g),
		newImageRemoveCmd(g), newImageInspectCmd(g))

	root.AddCommand(vm, image, newDiskCmd(g), newExecCmd(g), newRunCmd(g), newEventsCmd(g),
		newVersionCmd(g), newInfoCmd(g), newShellCmd(g), newManCmd(),
		newPsCmd(g), newStopCmd(g), newRmCmd(g), newLogsCmd(g), newStatsCmd(g), newCpCmd(g))
	addCompletions(root, g)
	return root
}

// dial connects to cabind. The connection is made lazily by gRPC, so a
// daemon that is not there shows up as codes.Unavailable on the first call.
func (g *globals) dial() (*grpc.ClientConn, error) {
	if g.socket == "" {
		return nil, usagef("--socket must not be empty")
	}
	// The unix:// scheme wants an absolute path; a relative --socket means
	// relative to where the user is.
	path, err := filepath.Abs(g.socket)
	if err != nil {
		return nil, fmt.Errorf("socket path %q: %w", g.socket, err)
	}
	conn, err := client.Dial(path)
	if err != nil {
		return nil, fmt.Errorf("connect to cabind at %s: %w", path, err)
	}
	return conn, nil
}

// groupArgs rejects arguments to a command that only groups others, which
// cobra would otherwise answer with help and exit 0.
func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		// cobra only sets its default on the way to its own message.
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return usagef("%s", msg)
}

func showHelp(cmd *cobra.Command, _ []string) error {
	return cmd.Help()
}

// nameArg accepts exactly one argument, the VM's name.
func nameArg(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0 || args[0] == "":
		return usagef("%s needs a VM name", verb(cmd))
	case len(args) > 1:
		return usagef("%s takes one VM name, got %d arguments", verb(cmd), len(args))
	}
	return nil
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", verb(cmd), args[0])
	}
	return nil
}

// verb is the command's path below the root, "vm start", for messages that
// already start with "cabin: ".
func verb(cmd *cobra.Command) string {
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}
