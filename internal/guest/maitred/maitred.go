// Package maitred is the guest's system service (ChromiumOS maitred's API,
// vm_tools.Maitred): processes, mounts and shares, time, network, DNS,
// power, and Termina's bring-up with its stateful disk (package storage
// holds the disk's part). Maitred holds the domain logic and knows
// nothing of protobuf; Service is the thin gRPC edge over it.
package maitred

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/guest/storage"
	"github.com/cabinvm/cabin/internal/reaper"
)

// Defaults for Config.
const (
	ZoneinfoDir   = bootcfg.Zoneinfo
	EtcDir        = "/etc"
	RunDir        = "/run"
	DevDir        = "/dev"
	Console       = "/dev/console"
	Proc          = "/proc"
	RespawnLimit  = 10
	RespawnWindow = 30 * time.Second
)

// Config is what Maitred needs from the agent. Zero fields take the
// defaults above; tests point the roots and clocks elsewhere.
type Config struct {
	Log    *slog.Logger
	Reaper *reaper.Reaper
	// PowerOff is what Shutdown does once it has replied: power off as
	// PID 1, stop the agent when it runs as an ordinary process.
	PowerOff func()
	// WaitModules blocks until the modules a mount may need are loaded;
	// nil when there is nothing to wait for.
	WaitModules func(context.Context) error
	// WaitShare blocks until the guest image's share, which holds
	// zoneinfo and the filesystem tools, is mounted, and says why it is
	// not; nil when they are where they are looked for already.
	WaitShare bootcfg.ShareWait

	// Net configures the VM's network (ConfigureNetwork,
	// OnHostNetworkChanged); nil for an agent that configures none.
	Net *netconf.Net

	// Storage is the stateful disk StartTermina mounts and the resize,
	// space and balloon calls act on; nil makes one with storage's
	// defaults.
	Storage *storage.Stateful
	// Mount is the mount(2) Mount9P calls; unix.Mount by default.
	Mount func(source, target, fstype string, flags uintptr, data string) error

	ZoneinfoDir string
	EtcDir      string
	// RunDir and DevDir are where the files for a container guest's
	// garcon go (ConfigureNetwork's host_ip, ConfigureContainerGuest's
	// token and link), as upstream puts them.
	RunDir  string
	DevDir  string
	Console string
	// Proc is where processes are found (a dnsmasq to flush).
	Proc string
	// SetClock sets the system clock; clock_settime(CLOCK_REALTIME) by
	// default.
	SetClock func(time.Time) error
	// Now and the respawn limits decide when a respawning process is
	// stopped: RespawnLimit spawns within RespawnWindow.
	Now           func() time.Time
	RespawnLimit  int
	RespawnWindow time.Duration
}

// Maitred is the guest system service's domain logic.
type Maitred struct {
	cfg Config
	log *slog.Logger

	shutdown sync.Once
	// mu orders starting a respawner against stopping them all.
	mu      sync.Mutex
	stopped bool
	// done is closed when the agent stops or shuts down; respawning ends
	// with it.
	done chan struct{}
	// respawners counts the processes being kept alive.
	respawners sync.WaitGroup
	// etcMu serialises replacing files (in /etc, /run, /dev), which use
	// fixed temporary names.
	etcMu sync.Mutex
}

// New returns a Maitred with cfg's zero fields defaulted.
func New(cfg Config) *Maitred {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.PowerOff == nil {
		cfg.PowerOff = func() {}
	}
	if cfg.ZoneinfoDir == "" {
		cfg.ZoneinfoDir = ZoneinfoDir
	}
	if cfg.EtcDir == "" {
		cfg.EtcDir = EtcDir
	}
	if cfg.RunDir == "" {
		cfg.RunDir = RunDir
	}
	if cfg.DevDir == "" {
		cfg.DevDir = DevDir
	}
	if cfg.Storage == nil {
		cfg.Storage = storage.New(storage.Config{
			Log:         cfg.Log.With("part", "storage"),
			Reaper:      cfg.Reaper,
			WaitModules: cfg.WaitModules,
			WaitShare:   cfg.WaitShare,
		})
	}
	if cfg.Mount == nil {
		cfg.Mount = unix.Mount
	}
	if cfg.Console == "" {
		cfg.Console = Console
	}
	if cfg.Proc == "" {
		cfg.Proc = Proc
	}
	if cfg.SetClock == nil {
		cfg.SetClock = setRealtime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RespawnLimit <= 0 {
		cfg.RespawnLimit = RespawnLimit
	}
	if cfg.RespawnWindow <= 0 {
		cfg.RespawnWindow = RespawnWindow
	}
	return &Maitred{cfg: cfg, log: cfg.Log, done: make(chan struct{})}
}

// Close stops respawning processes (it leaves them running) and waits for
// the supervisors to notice; it lets go of the storage balloon.
func (m *Maitred) Close() {
	m.stopRespawning()
	m.respawners.Wait()
	m.cfg.Storage.Close()
}

func (m *Maitred) stopRespawning() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stopped {
		m.stopped = true
		close(m.done)
	}
}

// Shutdown stops respawning, so that the processes the power-off kills stay
// dead, and powers off in the background: the caller replies first.
func (m *Maitred) Shutdown() {
	m.stopRespawning()
	m.shutdown.Do(func() {
		m.log.Info("shutdown requested")
		go m.cfg.PowerOff()
	})
}

// PrepareToSuspend flushes filesystems, so a suspended VM that never
// resumes loses nothing.
func (m *Maitred) PrepareToSuspend() {
	unix.Sync()
}

// KernelVersion returns the kernel's release and version (uname -r, -v).
func (m *Maitred) KernelVersion() (release, version string, err error) {
	k, err := runningKernel()
	return k.release, k.version, err
}

type kernelID struct{ release, version string }

// runningKernel asks uname once: a kernel's release and version do not
// change while it runs, and under emulation a system call is not cheap.
var runningKernel = sync.OnceValues(func() (kernelID, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return kernelID{}, fmt.Errorf("uname: %w", err)
	}
	return kernelID{unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Version[:])}, nil
})
