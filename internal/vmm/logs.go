package vmm

import (
	"fmt"
	"os"

	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// maxLogBytes is the most of a VM's console log Logs returns, as
// upstream's GetVmLogs does.
const maxLogBytes = 30 << 20

// Logs returns a VM's console log and its rotations, at most 30 MiB, newest
// last. Logs of a stopped VM stay readable until it is started again.
func (m *Manager) Logs(key Key) ([]byte, error) {
	if err := ValidateName(key.Name); err != nil {
		return nil, err
	}
	if err := ValidateOwner(key.Owner); err != nil {
		return nil, err
	}
	dir := m.opts.Root.VM(statedir.VMID(key.Owner, key.Name))
	if _, err := os.Stat(dir.Record()); err != nil {
		return nil, fmt.Errorf("vm %s: %w", key, errdefs.ErrNotFound)
	}
	return consolelog.Read(consolelog.FilesOf(dir), maxLogBytes)
}
