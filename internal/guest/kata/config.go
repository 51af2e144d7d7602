// Package kata serves Kata Containers' grpc.AgentService in the guest: OCI
// containers run by cabin-runtime (docs/containers.md), with the storages
// they use, their processes' stdio and exit statuses.
//
// The agent never links libcontainer: every container operation is one run
// of cabin-runtime, a program of its own, started through the reaper. The
// agent keeps the process table (pids read from the runtime's pid files,
// exits claimed from the reaper once those processes are PID 1's orphans)
// and the processes' ends of their pipes or terminals.
package kata

import (
	"context"
	"log/slog"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/reaper"
)

// Where the agent keeps its container state. Storage mount points may not
// be at or below these.
const (
	// DefaultRuntimeRoot is cabin-runtime's --root: libcontainer's state.
	DefaultRuntimeRoot = "/run/cabin/runtime"
	// DefaultBundles holds one OCI bundle directory per container, named
	// by its id.
	DefaultBundles = "/run/cabin/bundles"
)

// The files in a bundle directory. Exec files are numbered, not named by
// exec id: ids can be reused once their process is waited for.
const (
	specFile    = "config.json"
	initPidFile = "init.pid"
	execPrefix  = "exec-"
)

// storageRoot is the directory storage mount points must be below.
const storageRoot = "/run"

// Config is what a Sandbox needs.
type Config struct {
	Log *slog.Logger
	// Reaper reaps cabin-runtime and, once they are orphans, the
	// containers' processes.
	Reaper *reaper.Reaper
	// Runtime is cabin-runtime's path; empty means bootcfg.RuntimeBinary.
	Runtime string
	// RuntimeRoot is the runtime's --root; empty means DefaultRuntimeRoot.
	RuntimeRoot string
	// Bundles is where bundles are written; empty means DefaultBundles.
	Bundles string
	// WaitModules blocks until the late kernel modules (9p among them) are
	// loaded; nil when there are none to wait for.
	WaitModules func(context.Context) error
	// WaitShare blocks until the guest image's share is mounted on
	// bootcfg.RootfsMount (cabin-runtime is there) and says why it is
	// not; nil when the files are where they are looked for already.
	// A storage of the share's tag is then a bind of that mount.
	WaitShare bootcfg.ShareWait
	// SetHostname sets the guest's hostname; nil means sethostname(2).
	SetHostname func(string) error
	// Net configures the VM's network namespace, which containers
	// without one of their own share (the network calls); nil for an
	// agent that configures none.
	Net *netconf.Net
	// Bounds, if not nil, are what every container is kept within; nil
	// leaves specs as their clients send them (a development agent,
	// tests).
	Bounds *Bounds
}

func (c Config) withDefaults() Config {
	if c.Runtime == "" {
		c.Runtime = bootcfg.RuntimeBinary
	}
	if c.RuntimeRoot == "" {
		c.RuntimeRoot = DefaultRuntimeRoot
	}
	if c.Bundles == "" {
		c.Bundles = DefaultBundles
	}
	if c.SetHostname == nil {
		c.SetHostname = func(name string) error { return unix.Sethostname([]byte(name)) }
	}
	if c.WaitModules == nil {
		c.WaitModules = func(context.Context) error { return nil }
	}
	c.RuntimeRoot = filepath.Clean(c.RuntimeRoot)
	c.Bundles = filepath.Clean(c.Bundles)
	return c
}
