package main

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestUnreachableMessage: a user who may not open the socket is told about
// its permissions, not asked whether cabind runs.
func TestUnreachableMessage(t *testing.T) {
	denied := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}
	msg := unreachableMessage("/run/cabin/cabind.sock", denied)
	if !strings.Contains(msg, "permission denied") || !strings.Contains(msg, "usermod -aG cabin") || strings.Contains(msg, "is cabind running") {
		t.Errorf("permission denied: %q", msg)
	}
	gone := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}
	msg = unreachableMessage("/run/cabin/cabind.sock", gone)
	if !strings.Contains(msg, "is cabind running?") || !strings.Contains(msg, "no such file") {
		t.Errorf("no socket: %q", msg)
	}
	if msg := unreachableMessage("/x", errors.New("odd")); !strings.Contains(msg, "odd") {
		t.Errorf("other: %q", msg)
	}
}
