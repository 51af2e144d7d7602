// Package hostinfo gathers what `cabin version` and `cabin info` show:
// cabind's and the guest's versions, QEMU's, the accelerator and why, the
// host-guest channel devices, the state dir's space and the guest image
// cache. It reads the host as it is when asked; nothing is cached but
// QEMU's version line, which only a new binary changes.
package hostinfo

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/guestimage"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/version"
)

// Source is where the facts come from; the daemon fills it in.
type Source struct {
	// QEMUBinary is the QEMU program; qemu.DefaultBinary when empty.
	QEMUBinary  string
	Accel       hypervisor.Accel
	AccelReason string
	StateDir    string
	// ImageDir is the guest image cache.
	ImageDir string
	// AgentBinary is the cabin-agent put into the guest image.
	AgentBinary string
	// Image is the cached guest image, if any.
	Image func() (guestimage.Image, time.Time, bool)
	// Network is the network of VMs that ask for none.
	Network string
	// Running counts the VMs cabind runs.
	Running func() int

	qemuMu      sync.Mutex
	qemuVersion string
}

// Version is cabind's version and the guest's.
type Version struct {
	Cabind, Go, Agent, GuestKernel, QEMU string
	Accel                                hypervisor.Accel
}

// Info is the host as cabind sees it.
type Info struct {
	QEMUBinary, QEMUVersion string
	Accel                   hypervisor.Accel
	AccelReason             string
	VhostVsock              bool
	VhostVsockReason        string
	VhostNet                bool
	StateDir                string
	StateFree, StateTotal   uint64
	ImageKernel             string
	ImageInitramfsBytes     int64
	ImageBuiltAt            time.Time
	ImageCacheBytes         int64
	HostKernel              string
	HostCPUs                int
	HostMemory              uint64
	Network                 string
	Running                 int
}

// Version gathers the versions.
func (s *Source) Version(ctx context.Context) Version {
	v := Version{Cabind: version.Version, Go: runtime.Version(), Accel: s.Accel, QEMU: s.qemu(ctx)}
	v.Agent, _ = BinaryVersion(s.AgentBinary)
	if s.Image != nil {
		if img, _, ok := s.Image(); ok {
			v.GuestKernel = img.KernelVersion
		}
	}
	return v
}

// Info gathers the host's facts. A fact that cannot be read is left
// empty; none fails the call.
func (s *Source) Info(ctx context.Context) Info {
	in := Info{
		QEMUBinary: s.binary(), QEMUVersion: s.qemu(ctx),
		Accel: s.Accel, AccelReason: s.AccelReason,
		VhostNet: qemu.HaveVhostNet(), StateDir: s.StateDir,
		HostCPUs: runtime.NumCPU(), Network: s.Network,
	}
	in.VhostVsock, in.VhostVsockReason = openDevice("/dev/vhost-vsock")
	var st unix.Statfs_t
	if unix.Statfs(s.StateDir, &st) == nil {
		in.StateFree, in.StateTotal = st.Bavail*uint64(st.Bsize), st.Blocks*uint64(st.Bsize)
	}
	if s.Image != nil {
		if img, built, ok := s.Image(); ok {
			in.ImageKernel, in.ImageInitramfsBytes, in.ImageBuiltAt = img.KernelVersion, img.InitramfsBytes, built
		}
	}
	in.ImageCacheBytes = DiskUsage(s.ImageDir)
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		in.HostKernel = unix.ByteSliceToString(uts.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		in.HostMemory = uint64(si.Totalram) * uint64(si.Unit)
	}
	if s.Running != nil {
		in.Running = s.Running()
	}
	return in
}

func (s *Source) binary() string {
	if s.QEMUBinary == "" {
		return qemu.DefaultBinary
	}
	return s.QEMUBinary
}

// qemu is the first line of `QEMU --version`, asked until it answers and
// then kept.
func (s *Source) qemu(ctx context.Context) string {
	s.qemuMu.Lock()
	defer s.qemuMu.Unlock()
	if s.qemuVersion != "" {
		return s.qemuVersion
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.binary(), "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	s.qemuVersion = strings.TrimSpace(string(line))
	return s.qemuVersion
}

// openDevice tells whether a device node opens read-write, and why not.
func openDevice(path string) (bool, string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, err.Error()
	}
	f.Close()
	return true, ""
}

// versionFlag is the linker flag cabin's builds set the version with.
const versionFlag = "-X github.com/cabinvm/cabin/internal/version.Version="

// BinaryVersion is the version a cabin binary (the agent) was built with:
// from its Go build information when that has the -ldflags setting the
// Makefile stamps (a -trimpath build leaves it out), else what the binary
// says to --version (the agent answers it when it is not PID 1, and does
// nothing else), else the VCS revision Go recorded.
func BinaryVersion(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("no binary")
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if v, ok := fromLDFlags(bi); ok {
		return v, nil
	}
	if v, ok := askVersion(path); ok {
		return v, nil
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return "dev (" + s.Value + ")", nil
		}
	}
	return "dev", nil
}

// askVersion runs path --version and takes the version from its
// "NAME VERSION" line.
func askVersion(path string) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", false
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || !strings.HasPrefix(f[0], "cabin") {
		return "", false
	}
	return f[1], true
}

func fromLDFlags(bi *buildinfo.BuildInfo) (string, bool) {
	for _, s := range bi.Settings {
		if s.Key != "-ldflags" {
			continue
		}
		if _, v, ok := strings.Cut(s.Value, versionFlag); ok {
			v, _, _ = strings.Cut(v, " ")
			return strings.Trim(v, `"'`), true
		}
	}
	return "", false
}

// DiskUsage is the space the files below dir take on disk (allocated
// blocks, so sparse files count what they hold); 0 when dir is missing.
func DiskUsage(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}
