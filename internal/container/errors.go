package container

import (
	"errors"
	"fmt"
)

// Error categories. Errors wrap one of them with %w; ExitCode maps the
// category to the contract's exit status, once, at the command's edge.
// They are cabin-runtime's own rather than internal/errdefs's, which would
// pull gRPC into this small static binary.
var (
	// ErrInvalidArgument: bad usage, an invalid spec, id, path or signal.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no container has the id.
	ErrNotFound = errors.New("no such container")
	// ErrAlreadyExists: a container has the id already.
	ErrAlreadyExists = errors.New("container exists")
)

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
	case errors.Is(err, ErrInvalidArgument):
		return ExitUsage
	case errors.Is(err, ErrNotFound):
		return ExitNotFound
	case errors.Is(err, ErrAlreadyExists):
		return ExitExists
	}
	return ExitFailure
}

// kindError puts an error in a category without the category's text in
// its message, so messages read "bundle /x: no such file", not "invalid
// argument: bundle /x: ...".
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// invalidf is an ErrInvalidArgument error; format may use %w.
func invalidf(format string, args ...any) error {
	return &kindError{kind: ErrInvalidArgument, err: fmt.Errorf(format, args...)}
}

// Invalid puts err in the ErrInvalidArgument category: for the command
// line's own usage errors.
func Invalid(err error) error {
	return &kindError{kind: ErrInvalidArgument, err: err}
}
