// Package names is the one rule for the names clients give what cabin
// keeps: VMs, containers, exec sessions. A name is 1 to a limit of ASCII
// letters, digits, '.', '_' and '-', not starting with '.' or '-'. So it
// shows and logs as it is, travels in gRPC metadata (cabin-vm), reads the
// same to every API and every tool, can name a directory without being "."
// or "..", and is never taken for a command line flag.
package names

import (
	"fmt"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Limits. A VM name is capped as upstream concierge caps it; a container's
// id may be as long as the 64 hex digits containerd gives the containers a
// Kata shim creates.
const (
	MaxVM        = 60
	MaxContainer = 64
)

// Check checks name, the value of a request's field, against the rule
// with at most max characters. Its error is errdefs.ErrInvalidArgument,
// naming the field.
func Check(field, name string, max int) error {
	switch {
	case name == "":
		return errdefs.InvalidArgument(field, "must not be empty")
	case len(name) > max:
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d characters; at most %d", len(name), max))
	case name[0] == '.' || name[0] == '-':
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q starts with %q", name, name[0]))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if allowed(c) {
			continue
		}
		what := fmt.Sprintf("%q", c)
		if c >= 0x80 {
			what = fmt.Sprintf("the non-ASCII byte %#02x", c)
		}
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q has %s; only letters, digits, '.', '_' and '-' are allowed", name, what))
	}
	return nil
}

func allowed(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}
