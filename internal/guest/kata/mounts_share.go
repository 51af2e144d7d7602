package kata

import (
	"context"
	"fmt"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// The agent mounts the guest image's share (9p tag bootcfg.RootfsTag) on
// bootcfg.RootfsMount itself, for the files boot does not need. The kernel
// mounts a 9p tag once at a time, so a storage of that tag (cabin run's
// built-in roots) is a bind of the agent's mount, with the storage's
// flags; and no storage may be mounted over the agent's.

// withShare has the storages of the share wait for the agent's mount of
// it (wait) and bind it. A nil wait leaves them mounted as asked.
func (m *mounts) withShare(wait bootcfg.ShareWait) *mounts {
	if wait != nil {
		m.waitShare = wait
		m.reserved = append(m.reserved, bootcfg.RootfsMount)
	}
	return m
}

// waitShareFor waits for the agent's mount of the share when list has a
// storage of it; its error says why the share is not there.
func (m *mounts) waitShareFor(ctx context.Context, field string, list []Storage) error {
	if m.waitShare == nil {
		return nil
	}
	for i, s := range list {
		if s.Driver == Driver9P && s.Source == bootcfg.RootfsTag {
			if err := m.waitShare(ctx); err != nil {
				return fmt.Errorf("%s[%d]: %w", field, i, err)
			}
			return nil
		}
	}
	return nil
}

// agentShare is the agent's mount of the share spec would mount, or "".
func (m *mounts) agentShare(spec mountSpec) string {
	if m.waitShare == nil || spec.fstype != fstype9P || spec.source != bootcfg.RootfsTag {
		return ""
	}
	return bootcfg.RootfsMount
}
