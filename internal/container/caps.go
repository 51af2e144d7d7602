package container

import (
	"slices"

	"github.com/opencontainers/runc/libcontainer/capabilities"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// checkCapabilities refuses a capability name libcontainer does not know:
// it would drop it with a warning, and the process run with fewer
// capabilities than asked, or keep one the caller meant to name and
// misspelt.
func checkCapabilities(field string, c *specs.LinuxCapabilities) error {
	if c == nil {
		return nil
	}
	known := capabilities.KnownCapabilities()
	for _, set := range []struct {
		name string
		caps []string
	}{
		{"bounding", c.Bounding}, {"effective", c.Effective}, {"inheritable", c.Inheritable},
		{"permitted", c.Permitted}, {"ambient", c.Ambient},
	} {
		for _, name := range set.caps {
			if !slices.Contains(known, name) {
				return invalidf("%s.capabilities.%s: %q is not a capability", field, set.name, name)
			}
		}
	}
	return nil
}
