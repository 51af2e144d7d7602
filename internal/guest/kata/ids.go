package kata

import (
	"fmt"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// maxID is the longest container or exec id.
const maxID = 64

// checkID checks a container or exec id: 1-64 characters of
// [A-Za-z0-9_.-], not starting with "." or "-" (docs/containers.md). Ids
// name bundle directories and go on cabin-runtime's command line, where a
// leading "-" would read as a flag.
func checkID(field, id string) error {
	if id == "" {
		return errdefs.InvalidArgument(field, "must not be empty")
	}
	if len(id) > maxID {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d characters; at most %d", len(id), maxID))
	}
	if id[0] == '.' || id[0] == '-' {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%q starts with %q", id, id[0]))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q has %q; only letters, digits, '_', '.' and '-' are allowed", id, c))
		}
	}
	return nil
}
