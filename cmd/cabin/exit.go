package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes other than a remote process's own.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitBrokenPipe is the status a shell reports for a process killed
	// by SIGPIPE (128+13), which is what cabin would be without exec -it
	// catching the signal.
	exitBrokenPipe = 128 + int(syscall.SIGPIPE)
)

// usageError marks a mistake in the command line: exit 2 and point at --help.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error {
	return &usageError{fmt.Errorf(format, a...)}
}

// remoteExitError carries the exit code of a process run by cabin exec, so
// that it becomes cabin's own exit code without a message: the process has
// already said what it had to say on its own streams.
type remoteExitError struct{ code int }

func (e *remoteExitError) Error() string {
	return fmt.Sprintf("remote process exited with code %d", e.code)
}

// report prints err for the user and returns the exit code. It is the one
// place where errors become exit codes.
func report(w io.Writer, cmd *cobra.Command, err error, socket string) int {
	if err == nil {
		return exitOK
	}
	var rexit *remoteExitError
	if errors.As(err, &rexit) {
		return rexit.code
	}
	if errors.Is(err, syscall.EPIPE) {
		// cabin's own output was closed by its reader, which is done
		// with it (| head): end as a process killed by SIGPIPE does,
		// without a message that would only be noise.
		return exitBrokenPipe
	}
	if status.Code(unwrapStatus(err)) == codes.Unavailable {
		// Unavailable is also what the daemon says when, for example, a
		// guest agent is unreachable; only blame the socket when the
		// socket itself does not answer.
		if probeErr := probeSocket(socket); probeErr != nil {
			fmt.Fprintln(w, "cabin: "+unreachableMessage(socket, probeErr))
			return exitFailure
		}
	}
	fmt.Fprintln(w, "cabin: "+errorMessage(err))
	var serr *startFailedError
	if errors.As(err, &serr) {
		return serr.code
	}
	var uerr *usageError
	if errors.As(err, &uerr) {
		path := "cabin"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", path)
		return exitUsage
	}
	return exitFailure
}

// grpcStatusError is what gRPC's status errors implement.
type grpcStatusError interface {
	error
	GRPCStatus() *status.Status
}

// unwrapStatus finds the gRPC status error in err's chain, or returns err.
func unwrapStatus(err error) error {
	var se grpcStatusError
	if errors.As(err, &se) {
		return se
	}
	return err
}

// errorMessage is err's text with gRPC's "rpc error: code = X desc = Y"
// replaced by Y: the daemon's messages already name the field or the VM at
// fault, and the code adds only noise for a person reading them.
func errorMessage(err error) string {
	msg := err.Error()
	var se grpcStatusError
	if !errors.As(err, &se) {
		return msg
	}
	st := se.GRPCStatus()
	desc := st.Message()
	if desc == "" {
		desc = st.Code().String()
	}
	return strings.Replace(msg, se.Error(), desc, 1)
}

// probeSocket checks whether anything accepts connections on socket.
func probeSocket(socket string) error {
	path, err := filepath.Abs(socket)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// unreachableMessage explains a failed connection: which socket was tried,
// why it failed, and what to check.
func unreachableMessage(socket string, probeErr error) string {
	reason := probeErr
	var opErr *net.OpError
	if errors.As(probeErr, &opErr) && opErr.Err != nil {
		// net's own text repeats the path; keep only the cause.
		reason = opErr.Err
	}
	if errors.Is(reason, syscall.EACCES) || errors.Is(reason, syscall.EPERM) {
		// cabind runs; this user may not use its socket.
		return fmt.Sprintf("cannot connect to cabind at %s: permission denied: the socket is for root and the members of its group "+
			"(cabind --group, default cabin); ask to be added (usermod -aG cabin $USER, then log in again) or use sudo", socket)
	}
	return fmt.Sprintf("cannot reach cabind at %s: %v (is cabind running? choose the socket with --socket or $%s)",
		socket, reason, socketEnv)
}
