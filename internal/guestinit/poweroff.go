package guestinit

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// KillGrace is how long processes get between SIGTERM and SIGKILL.
const KillGrace = 5 * time.Second

// pfKthread is PF_KTHREAD in the flags field of /proc/<pid>/stat.
const pfKthread = 0x00200000

// userProcesses lists the pids in procfs (a /proc-like directory) of live
// user-space processes other than self. Kernel threads ignore signals sent
// with kill(-1, ...), and zombies are dead already: the reaper collects them.
func userProcesses(procfs string, self int) ([]int, error) {
	entries, err := os.ReadDir(procfs)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procfs, e.Name(), "stat"))
		if err != nil {
			continue // exited while we looked
		}
		state, flags, ok := parseStat(string(b))
		if !ok || state == "Z" || state == "X" || flags&pfKthread != 0 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// parseStat returns the state and flags fields of a /proc/<pid>/stat line.
// The command name may hold spaces and parentheses, so fields are counted
// from its last ')'.
func parseStat(s string) (state string, flags uint64, ok bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	// After ")": state(3) ppid pgrp session tty_nr tpgid flags(9).
	f := strings.Fields(s[i+1:])
	if len(f) < 7 {
		return "", 0, false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return f[0], flags, true
}

// Group is a set of processes to end together: every process but PID 1
// (KillAll), or those an agent service started.
type Group interface {
	// SignalAll sends sig to every process of the group.
	SignalAll(sig syscall.Signal) error
	// Left lists the processes of the group still alive.
	Left() ([]int, error)
}

// killWait bounds the wait after SIGKILL: it cannot be ignored, but a
// process in uninterruptible sleep takes a moment to go.
const killWait = time.Second

// Terminate ends g's processes: SIGTERM, up to grace for them to exit (less
// when they all do), then SIGKILL to what is left. It is the one ladder the
// agent ends processes with, in the VM (KillAll) and among its own.
func Terminate(ctx context.Context, log *slog.Logger, g Group, grace time.Duration) {
	if err := g.SignalAll(unix.SIGTERM); err != nil {
		log.Warn("SIGTERM", "err", err)
	}
	termCtx, cancel := context.WithTimeout(ctx, grace)
	gone := waitGone(termCtx, g)
	cancel()
	if gone {
		return
	}
	pids, _ := g.Left()
	log.Info("killing processes that outlived SIGTERM", "pids", pids, "grace", grace)
	if err := g.SignalAll(unix.SIGKILL); err != nil {
		log.Warn("SIGKILL", "err", err)
	}
	killCtx, cancel := context.WithTimeout(ctx, killWait)
	waitGone(killCtx, g)
	cancel()
}

// waitGone polls until none of g is left or ctx ends, and reports whether
// none is left.
func waitGone(ctx context.Context, g Group) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pids, err := g.Left()
		if err == nil && len(pids) == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// everyone is every user-space process in procfs but self, signalled with
// kill(-1, ...): the processes of a VM, for its PID 1.
type everyone struct {
	procfs string
	self   int
}

var _ Group = everyone{}

func (e everyone) SignalAll(sig syscall.Signal) error {
	if err := unix.Kill(-1, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("signal %v to all: %w", sig, err)
	}
	return nil
}

func (e everyone) Left() ([]int, error) { return userProcesses(e.procfs, e.self) }

// KillAll ends every process but the caller with Terminate: SIGTERM, and
// SIGKILL to those left after grace. It is meant for PID 1, whose reaper
// collects what it kills.
func KillAll(ctx context.Context, log *slog.Logger, grace time.Duration) {
	Terminate(ctx, log, everyone{procfs: "/proc", self: os.Getpid()}, grace)
}

// PowerOff ends the VM in order: every process gets SIGTERM, then SIGKILL
// after KillGrace, filesystems are synced, and the kernel powers off. It
// returns only if the kernel refuses.
func PowerOff(log *slog.Logger) error {
	log.Info("powering off")
	KillAll(context.Background(), log, KillGrace)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}
