package kata

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

const (
	// runtimeTimeout bounds one run of cabin-runtime. Its operations are
	// short; one that hangs is killed rather than holding its container's
	// calls forever. A call's own context does not cut a run short: a
	// create or delete stopped half-way would leave state the agent does
	// not know of.
	runtimeTimeout = 2 * time.Minute
	// maxRuntimeOutput bounds what is kept of the runtime's stdout and
	// stderr.
	maxRuntimeOutput = 64 << 10
)

// The runtime's exit codes (docs/containers.md).
const (
	exitFailure  = 1
	exitInvalid  = 2
	exitNotFound = 3
	exitExists   = 4
)

// runtime runs cabin-runtime.
type runtime struct {
	path, root string
	reaper     *reaper.Reaper
	log        *slog.Logger
	feats      featureCache
	// wait, if set, waits for the share that holds the runtime.
	wait bootcfg.ShareWait
}

// RuntimeError is a run of cabin-runtime that failed: its exit and the
// error line it printed. It unwraps to the errdefs category of its exit
// code.
type RuntimeError struct {
	Verb string
	Exit reaper.Exit
	// Message is the runtime's last line on stderr.
	Message string
}

func (e *RuntimeError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no message"
	}
	if e.Exit.Signal != 0 {
		return fmt.Sprintf("cabin-runtime %s: killed by %v: %s", e.Verb, e.Exit.Signal, msg)
	}
	return fmt.Sprintf("cabin-runtime %s: %s", e.Verb, msg)
}

func (e *RuntimeError) Unwrap() error {
	if e.Exit.Signal != 0 {
		return nil
	}
	switch e.Exit.Code {
	case exitInvalid:
		return errdefs.ErrInvalidArgument
	case exitNotFound:
		return errdefs.ErrNotFound
	case exitExists:
		return errdefs.ErrAlreadyExists
	}
	return nil
}

// run runs cabin-runtime with args (a verb and its arguments) and extra as
// its fds 3 and up, and returns its stdout. extra stays open: the caller
// owns it.
func (rt *runtime) run(args []string, extra []*os.File) ([]byte, error) {
	verb := args[0]
	if rt.wait != nil {
		ctx, cancel := context.WithTimeout(context.Background(), runtimeTimeout)
		err := rt.wait.For(ctx, rt.path)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("cabin-runtime %s: %w", verb, err)
		}
	}
	stdout, err := memfd("cabin-runtime-stdout")
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	stderr, err := memfd("cabin-runtime-stderr")
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	cmd := &exec.Cmd{
		Path: rt.path,
		Args: append([]string{rt.path, "--root", rt.root}, args...),
		// Files, not buffers: exec.Cmd copies into a buffer only in Wait,
		// which the reaper's ownership of wait4 rules out. And a file
		// gives no EOF to wait for, which the container's processes, if
		// they inherited it, would hold back.
		Stdout:     stdout,
		Stderr:     stderr,
		ExtraFiles: extra,
	}
	pid, exits, err := rt.reaper.StartCmd(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s %s: %w", rt.path, verb, err)
	}
	start := time.Now()
	var exit reaper.Exit
	select {
	case exit = <-exits:
	case <-time.After(runtimeTimeout):
		rt.log.Warn("cabin-runtime hangs; killing it", "verb", verb, "pid", pid)
		// Not reaped before its exit is delivered: the pid is still its.
		if err := reaper.Kill(pid, unix.SIGKILL); err != nil {
			rt.log.Warn("kill cabin-runtime", "pid", pid, "err", err)
		}
		exit = <-exits
	}
	out := readAll(stdout)
	rt.log.Debug("cabin-runtime", "args", args, "exit", exit.String(), "took", time.Since(start))
	if exit.Code == 0 && exit.Signal == 0 {
		return out, nil
	}
	return out, &RuntimeError{Verb: verb, Exit: exit, Message: lastLine(readAll(stderr))}
}

// memfd is an anonymous file in memory.
func memfd(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readAll reads f from its start, up to maxRuntimeOutput.
func readAll(f *os.File) []byte {
	b := make([]byte, maxRuntimeOutput)
	n, err := f.ReadAt(b, 0)
	if err != nil && n == 0 {
		return nil
	}
	return b[:n]
}

// lastLine is the last non-empty line of b: the contract's one-line error,
// after whatever else the runtime or libcontainer may have logged, without
// the program's name, which the error names already.
func lastLine(b []byte) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return strings.TrimPrefix(strings.TrimSpace(string(lines[len(lines)-1])), "cabin-runtime: ")
}

// isNotFound tells whether err is the runtime saying it has no such
// container.
func isNotFound(err error) bool {
	var re *RuntimeError
	return errors.As(err, &re) && errors.Is(err, errdefs.ErrNotFound)
}
