package guestinit

import (
	"context"
	"fmt"
	"time"

	"github.com/cabinvm/cabin/internal/channel"
)

// portPoll is how often WaitPort looks for the port. The port appears a
// moment after virtio_console loads, and its name only once the host has
// sent it; a short poll catches both without a uevent listener.
const portPoll = 5 * time.Millisecond

// WaitPort waits up to timeout for the virtio port called name to appear in
// sysfs (a channel.SysfsPorts-like directory) and returns its device node.
func WaitPort(ctx context.Context, sysfs, name string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(portPoll)
	defer tick.Stop()
	for {
		dev, err := channel.FindPort(sysfs, name)
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
