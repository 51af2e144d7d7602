package vmm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/caller/callertest"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

// qemuManager returns a manager on a fresh state dir that runs real QEMU,
// and a function that opens another manager on the same state dir, as a
// restarted cabind would.
func qemuManager(t *testing.T) (*Manager, func() *Manager) {
	t.Helper()
	qemutest.SkipWithoutQEMU(t)
	root := statedirtest.New(t)
	open := func() *Manager {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		// The halting kernel runs no agent: nothing to link to.
		m, err := New(Options{
			Root: root, Launcher: &qemu.Launcher{Log: log}, Guests: noGuests{},
			Accel: hypervisor.AccelTCG, Host: Host{CPUs: 2, MemoryMiB: 1024}, DefaultMemoryMiB: 256,
			Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		m.ladder = ladder{shutdownRPC: 5 * time.Second, step: 5 * time.Second}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m.StopAll(ctx, nil)
			m.Close()
		})
		if err := m.Adopt(context.Background()); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return open(), open
}

// noGuests links to no agent: a link's calls fail at once.
type noGuests struct{}

func (noGuests) Dial(resource.VM) GuestLink { return noLink{} }

type noLink struct{}

var errNoAgent = errors.New("no agent in this test")

func (noLink) SetTime(context.Context, time.Time) error             { return errNoAgent }
func (noLink) SetTimezone(context.Context, string) error            { return errNoAgent }
func (noLink) Shutdown(context.Context) error                       { return errNoAgent }
func (noLink) ConfigureNetwork(context.Context, GuestNetwork) error { return errNoAgent }
func (noLink) SetDNS(context.Context, DNS) error                    { return errNoAgent }
func (noLink) Close()                                               {}

// userFiles copies kernel and initrd into a directory a caller owns, and
// returns their new paths.
func userFiles(t *testing.T, kernel, initrd string) (string, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "cabin-user")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if !callertest.SearchableByOthers(filepath.Dir(dir)) {
		t.Skipf("%s is not searchable by other users", filepath.Dir(dir))
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, callertest.OtherUID, callertest.OtherUID); err != nil {
			t.Fatal(err)
		}
	}
	cp := func(src, name string) string {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	return cp(kernel, "my-vmlinux"), cp(initrd, "my-initrd")
}

// qemuArgs is the command line of process pid.
func qemuArgs(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

func argAfter(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// TestStartCallerFilesInQEMU starts real QEMU from a caller's kernel and
// initrd: QEMU gets them as open files (-kernel /proc/self/fd/3, -initrd
// /proc/self/fd/4) and runs, the record keeps their paths, and after a restart
// the VM is adopted without them.
func TestStartCallerFilesInQEMU(t *testing.T) {
	m, reopen := qemuManager(t)
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, []byte(strings.Repeat("initrd", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	kernel, initrd := userFiles(t, qemutest.HaltKernel(t), initrd)

	s := spec("user")
	s.MemoryMiB = 64
	s.Caller = &caller.Caller{UID: callertest.OtherUID, GIDs: []uint32{callertest.OtherUID}}
	s.Kernel, s.Initrd = kernel, initrd
	info, _, err := m.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	args := qemuArgs(t, info.PID)
	if k, i := argAfter(args, "-kernel"), argAfter(args, "-initrd"); k != "/proc/self/fd/3" || i != "/proc/self/fd/4" {
		t.Errorf("QEMU given -kernel %q -initrd %q, want /proc/self/fd/3 and /proc/self/fd/4", k, i)
	}
	// QEMU keeps its descriptors; they are the caller's files.
	for fd, want := range map[string]string{"3": kernel, "4": initrd} {
		if got, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(info.PID), "fd", fd)); err != nil || got != want {
			t.Errorf("QEMU's fd %s is %q (%v), want %q", fd, got, err, want)
		}
	}
	dir := m.opts.Root.VM(statedir.VMID("", "user"))
	rec, err := readRecord(dir)
	if err != nil || rec.Kernel != kernel || rec.Initrd != initrd {
		t.Fatalf("record %+v, %v; want kernel %q and initrd %q", rec, err, kernel, initrd)
	}

	// A restarted cabind adopts the VM; it does not need the files.
	m.Close()
	if err := os.RemoveAll(filepath.Dir(kernel)); err != nil {
		t.Fatal(err)
	}
	m = reopen()
	got, err := m.Get(Key{Name: "user"})
	if err != nil || !got.Adopted || got.PID != info.PID {
		t.Fatalf("after restart: %+v, %v; want pid %d adopted", got, err, info.PID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Stop(ctx, Key{Name: "user"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(Key{Name: "user"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("after stop: %v", err)
	}
}
