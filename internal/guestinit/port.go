package guestinit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// portPoll is how often WaitPort looks for the port. The port appears a
// moment after virtio_console loads, and its name only once the host has
// sent it; a short poll catches both without a uevent listener.
const portPoll = 5 * time.Millisecond

// WaitPort waits up to timeout for the virtio port called name to appear in
// sysfs (a SysfsPorts-like directory) and returns its device node.
func WaitPort(ctx context.Context, sysfs, name string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(portPoll)
	defer tick.Stop()
	for {
		dev, err := FindPort(sysfs, name)
		if err == nil {
			return dev, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("virtio port %q did not appear within %v (does the VM have a virtserialport of that name, and is virtio_console loaded?): %w",
				name, timeout, err)
		case <-tick.C:
		}
	}
}

// SysfsPorts is where the kernel lists virtio-serial ports with their names.
const SysfsPorts = "/sys/class/virtio-ports"

// FindPort returns the device node (/dev/vportNpM) of the port called name,
// looking in sysfs (a SysfsPorts-like directory).
func FindPort(sysfs, name string) (string, error) {
	entries, err := os.ReadDir(sysfs)
	if err != nil {
		return "", fmt.Errorf("list virtio ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysfs, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", e.Name()), nil
		}
	}
	return "", fmt.Errorf("no virtio port named %q: %w", name, os.ErrNotExist)
}
