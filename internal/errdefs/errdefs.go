// Package errdefs holds cabin's error categories, and nothing else: domain
// code wraps one of the sentinels with %w (or builds its error with Errorf
// or InvalidArgument), and each edge maps the category to its wire's code
// once (internal/errgrpc for gRPC; cabin-runtime's exit statuses). It
// imports no RPC package, so that every binary, the static guest ones
// included, can use the same categories.
package errdefs

import (
	"errors"
	"fmt"
)

// The categories. Wrap them: fmt.Errorf("vm %q: %w", name, errdefs.ErrNotFound).
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrNotImplemented     = errors.New("not implemented")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrInternal           = errors.New("internal error")
)

// Errorf formats an error in the category kind (one of the sentinels)
// without the category's own words in its message: Errorf(ErrNotFound,
// "container %q: no such container", id) reads as just that, and
// errors.Is finds both kind and any error format wraps with %w.
func Errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// kindError is an error put in a category it does not spell out.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// InvalidArgument is shorthand for an invalid-argument error naming the
// field: InvalidArgument("name", "must not be empty").
func InvalidArgument(field, problem string) error {
	return &fieldError{field: field, problem: problem}
}

type fieldError struct{ field, problem string }

func (e *fieldError) Error() string { return e.field + ": " + e.problem }
func (e *fieldError) Unwrap() error { return ErrInvalidArgument }
