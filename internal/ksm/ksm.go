// Package ksm turns on the host kernel's same-page merging (KSM) for
// cabind's VMs when the operator asks for it (cabind --ksm). QEMU marks
// every guest's RAM mergeable already (its mem-merge default); what KSM
// lacks on a stock host is its scanner, /sys/kernel/mm/ksm/run, which is
// off. Identical idle guests share most of their kernel and initramfs
// pages once ksmd has scanned them (docs/decisions.md §29), at the cost of
// ksmd's CPU and of guests' pages being readable through a timing side
// channel by the other guests that share them: a host setting for the
// operator to choose, never changed unasked.
package ksm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Dir is where the kernel exposes KSM (CONFIG_KSM).
const Dir = "/sys/kernel/mm/ksm"

// Mode values of Dir/run.
const (
	stopped = "0"
	running = "1"
	// unmerging is 2: stop and unmerge every merged page. cabind never
	// writes it: VMs outlive cabind, and so do their merged pages.
)

// Enable starts ksmd under dir (Dir on a real host) unless it runs
// already, and reports whether it was already on. Its other settings
// (pages_to_scan, sleep_millisecs) are left as the operator has them.
// It never turns KSM off: VMs outlive cabind, and turning it off is the
// operator's call.
func Enable(dir string) (wasOn bool, err error) {
	run := filepath.Join(dir, "run")
	b, err := os.ReadFile(run)
	if errors.Is(err, fs.ErrNotExist) {
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition, "ksm: %s is missing: this kernel has no KSM (CONFIG_KSM)", run)
	}
	if err != nil {
		return false, fmt.Errorf("ksm: %w", err)
	}
	switch mode := strings.TrimSpace(string(b)); mode {
	case running:
		return true, nil
	case stopped:
	default:
		// 2 is unmerging: an operator stopped it on purpose; anything
		// else is not a kernel we know.
		return false, errdefs.Errorf(errdefs.ErrFailedPrecondition, "ksm: %s is %q, not 0: left as it is", run, mode)
	}
	if err := os.WriteFile(run, []byte(running+"\n"), 0); err != nil {
		return false, fmt.Errorf("ksm: start: %w", err)
	}
	return false, nil
}
