package container

import (
	"errors"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Errors carry an internal/errdefs category; ExitCode maps the category
// to the contract's exit status, once, at the command's edge.

// Exit statuses of the contract (docs/containers.md).
const (
	ExitOK       = 0
	ExitFailure  = 1
	ExitUsage    = 2
	ExitNotFound = 3
	ExitExists   = 4
)

// ExitCode is the contract's exit status for err.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return ExitUsage
	case errors.Is(err, errdefs.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return ExitExists
	}
	return ExitFailure
}

// invalidf is an ErrInvalidArgument error; format may use %w. Its message
// is format's alone: "bundle /x: no such file", not "invalid argument: ...".
func invalidf(format string, args ...any) error {
	return errdefs.Errorf(errdefs.ErrInvalidArgument, format, args...)
}

// notFound is the error for a container id that names no container.
func notFound(id string) error {
	return errdefs.Errorf(errdefs.ErrNotFound, "container %q: no such container", id)
}

// exists is the error for a container id already taken.
func exists(id string) error {
	return errdefs.Errorf(errdefs.ErrAlreadyExists, "container %q: container exists", id)
}

// Invalid puts err in the ErrInvalidArgument category: for the command
// line's own usage errors.
func Invalid(err error) error {
	return errdefs.Errorf(errdefs.ErrInvalidArgument, "%w", err)
}
