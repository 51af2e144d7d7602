package guestlink

import (
	"context"
	"fmt"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/vmm"
)

var _ vmm.MemoryGuest = (*Link)(nil)

// dropCaches is what the guest runs to give up the memory it can do
// without: sync writes dirty pages back so that they can be dropped,
// drop_caches=3 drops the page cache and reclaimable slab, and
// compact_memory gathers the free pages into the 2 MiB blocks that free
// page reporting hands to the host. A fixed command: nothing of a
// request reaches it.
var dropCaches = []string{"/bin/sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches && echo 1 > /proc/sys/vm/compact_memory"}

// DropCaches has the guest drop its caches and compact its memory
// (Maitred.LaunchProcess of dropCaches, waited for).
func (l *Link) DropCaches(ctx context.Context) error {
	m, err := l.maitred(ctx)
	if err != nil {
		return err
	}
	resp, err := m.LaunchProcess(ctx, &vmtools.LaunchProcessRequest{Argv: dropCaches, WaitForExit: true})
	if err != nil {
		return err
	}
	switch {
	case resp.GetStatus() == vmtools.ProcessStatus_EXITED && resp.GetCode() == 0:
		return nil
	case resp.GetStatus() == vmtools.ProcessStatus_EXITED:
		return fmt.Errorf("drop caches in the guest: exit status %d: %w", resp.GetCode(), errdefs.ErrInternal)
	case resp.GetStatus() == vmtools.ProcessStatus_SIGNALED:
		return fmt.Errorf("drop caches in the guest: killed by signal %d: %w", resp.GetCode(), errdefs.ErrInternal)
	}
	return fmt.Errorf("drop caches in the guest: %s: %w", resp.GetStatus(), errdefs.ErrUnavailable)
}
