package kata

import "github.com/cabinvm/cabin/internal/names"

// maxID is the longest container or exec id.
const maxID = names.MaxContainer

// checkID checks a container or exec id against the one rule for names
// (internal/names; docs/containers.md). Ids name bundle directories and go
// on cabin-runtime's command line, where a leading "-" would read as a
// flag.
func checkID(field, id string) error {
	return names.Check(field, id, maxID)
}
