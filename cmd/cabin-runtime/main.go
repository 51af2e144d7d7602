// Command cabin-runtime creates and manages the OCI containers of a cabin
// guest on runc's libcontainer: one operation per run, for cabin-agent,
// which stays free of libcontainer and cgo. Its command line, stdio and
// exit codes are the contract in docs/containers.md; the work is in
// internal/container.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cabinvm/cabin/internal/container"
	// nsenter's C constructor runs before the Go runtime, so that a
	// re-executed init can enter namespaces while it has one thread.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"github.com/sirupsen/logrus"
)

// libcontainer re-executes this binary as "cabin-runtime init" to become a
// container's process. That must take over before main does anything,
// hence an init function, which runs once the packages it imports are
// initialised.
func init() {
	if len(os.Args) > 1 && os.Args[1] == container.InitArg {
		container.Init()
	}
}

const usage = `usage:
  cabin-runtime [--root DIR] create --bundle DIR --pid-file FILE [--terminal] ID
  cabin-runtime [--root DIR] start ID
  cabin-runtime [--root DIR] exec --process FILE --pid-file FILE [--terminal] ID
  cabin-runtime [--root DIR] kill [--all] ID SIGNAL
  cabin-runtime [--root DIR] delete [--force] ID
  cabin-runtime [--root DIR] state ID
  cabin-runtime [--root DIR] pause ID
  cabin-runtime [--root DIR] resume ID
  cabin-runtime [--root DIR] update --resources FILE ID
  cabin-runtime features
`

func main() {
	// libcontainer logs through logrus, a global. What matters reaches
	// this command as a returned error; its warnings on stderr would break
	// the contract's one error line.
	logrus.SetOutput(io.Discard)
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if err != nil {
		// One line, whatever libcontainer put in the message.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		fmt.Fprintln(stderr, "cabin-runtime: "+msg)
	}
	return container.ExitCode(err)
}

// command is a subcommand; it parses its own flags and arguments.
type command func(context.Context, *container.Runtime, []string, io.Writer) error

// lookup returns the subcommand called name.
func lookup(name string) (command, bool) {
	switch name {
	case "create":
		return create, true
	case "start":
		return withID(name, (*container.Runtime).Start), true
	case "exec":
		return execute, true
	case "kill":
		return kill, true
	case "delete":
		return remove, true
	case "state":
		return state, true
	case "pause":
		return withID(name, (*container.Runtime).Pause), true
	case "resume":
		return withID(name, (*container.Runtime).Resume), true
	case "update":
		return update, true
	}
	return nil, false
}

func dispatch(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("cabin-runtime")
	root := fs.String("root", container.DefaultRoot, "state directory")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return container.Invalid(errors.New("no command; see --help"))
	}
	name := fs.Arg(0)
	switch name {
	case "help":
		return flag.ErrHelp
	case "features":
		// Needs no state directory: nothing is made for it.
		return printFeatures(fs.Args()[1:], stdout)
	}
	cmd, ok := lookup(name)
	if !ok {
		return container.Invalid(fmt.Errorf("unknown command %q; see --help", name))
	}
	rt, err := container.New(*root)
	if err != nil {
		return err
	}
	return cmd(ctx, rt, fs.Args()[1:], stdout)
}

func create(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
	fs := newFlags("create")
	var o container.CreateOptions
	fs.StringVar(&o.Bundle, "bundle", "", "bundle directory holding config.json")
	id, err := parseProcess(fs, args, &o.PidFile, &o.Terminal, &o.Stdio)
	if err != nil {
		return err
	}
	return rt.Create(ctx, id, o)
}

func execute(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
	fs := newFlags("exec")
	var o container.ExecOptions
	fs.StringVar(&o.Process, "process", "", "file holding the OCI process as JSON")
	id, err := parseProcess(fs, args, &o.PidFile, &o.Terminal, &o.Stdio)
	if err != nil {
		return err
	}
	return rt.Exec(ctx, id, o)
}

// parseProcess adds the flags create and exec share, parses args with fs
// and takes the process's stdio from the inherited descriptors: fds 3-5,
// or the console socket on fd 3 with --terminal.
func parseProcess(fs *flag.FlagSet, args []string, pidFile *string, terminal *bool, stdio *container.Stdio) (id string, err error) {
	fs.StringVar(pidFile, "pid-file", "", "file to write the process's pid to")
	fs.BoolVar(terminal, "terminal", false, "give the process a terminal; fd 3 is the console socket")
	if id, err = parseID(fs, args); err != nil {
		return "", err
	}
	*stdio, err = container.InheritedStdio(*terminal)
	return id, err
}

func kill(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
	fs := newFlags("kill")
	all := fs.Bool("all", false, "signal every process of the container")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return container.Invalid(fmt.Errorf("kill: want ID SIGNAL, got %d arguments", fs.NArg()))
	}
	sig, err := container.ParseSignal(fs.Arg(1))
	if err != nil {
		return err
	}
	return rt.Kill(ctx, fs.Arg(0), sig, *all)
}

// update reads an OCI linux.resources document (runc update -r's) and
// applies what it sets.
func update(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
	fs := newFlags("update")
	file := fs.String("resources", "", "file holding the OCI linux.resources to set, as JSON")
	id, err := parseID(fs, args)
	if err != nil {
		return err
	}
	res, err := container.ReadResources(*file)
	if err != nil {
		return err
	}
	return rt.Update(ctx, id, res)
}

func remove(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
	fs := newFlags("delete")
	force := fs.Bool("force", false, "kill the container first if it has processes")
	id, err := parseID(fs, args)
	if err != nil {
		return err
	}
	return rt.Delete(ctx, id, *force)
}

func state(ctx context.Context, rt *container.Runtime, args []string, stdout io.Writer) error {
	id, err := parseID(newFlags("state"), args)
	if err != nil {
		return err
	}
	s, err := rt.State(ctx, id)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(s)
}

// printFeatures prints the runtime's OCI features document as JSON.
func printFeatures(args []string, stdout io.Writer) error {
	fs := newFlags("features")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return container.Invalid(fmt.Errorf("features: takes no arguments, got %d", fs.NArg()))
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(container.Features())
}

// withID makes a command of an operation that takes only an id.
func withID(name string, op func(*container.Runtime, context.Context, string) error) command {
	return func(ctx context.Context, rt *container.Runtime, args []string, _ io.Writer) error {
		id, err := parseID(newFlags(name), args)
		if err != nil {
			return err
		}
		return op(rt, ctx, id)
	}
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors are reported once, on one line, by run.
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses flags; its errors are usage errors, except -h.
func parse(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return container.Invalid(fmt.Errorf("%s: %w", fs.Name(), err))
}

// parseID parses flags followed by exactly one argument, the id.
func parseID(fs *flag.FlagSet, args []string) (string, error) {
	if err := parse(fs, args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", container.Invalid(fmt.Errorf("%s: want one container ID, got %d arguments", fs.Name(), fs.NArg()))
	}
	return fs.Arg(0), nil
}
