// Package netconf configures the guest's network through netlink: the
// uplink (the VM's first virtio-net card, eth0), its address and default
// route, the links, routes and neighbours Kata's clients set, IP
// forwarding and IPv6 renegotiation, and the iptables rules, for Maitred
// and Kata's AgentService alike. It knows nothing of protobuf.
//
// Everything it does happens in one network namespace: the agent's own,
// or the one Config.Netns names (tests make their own, and never touch
// the host's links or routes). Netlink sockets, sysctls under /proc/sys
// and the programs it runs all belong to the namespace of the thread
// that opens or forks them, so every operation runs on a thread in that
// namespace.
package netconf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// Defaults for Config.
const (
	// UplinkDriver is the driver of the VM's network cards.
	UplinkDriver = "virtio_net"
	ProcSys      = "/proc/sys"
)

// uplinkPoll is how often the uplink is looked for while its driver may
// still be loading.
const uplinkPoll = 20 * time.Millisecond

// Config is what a Net needs. Zero fields take the defaults.
type Config struct {
	Log *slog.Logger
	// Reaper runs iptables' programs (the agent is PID 1 and owns
	// wait4); required for the IPTables calls.
	Reaper *reaper.Reaper
	// Netns names the network namespace to configure (a path setns can
	// open, such as /proc/self/fd/N or /run/netns/NAME); empty is the
	// agent's own.
	Netns string
	// UplinkDriver is the driver whose first link (by index) is the
	// uplink, which Maitred configures; UplinkDriver by default.
	UplinkDriver string
	// WaitModules blocks until the late kernel modules (the uplink's
	// driver, netfilter) are loaded; nil when there is nothing to wait
	// for. The uplink is looked for while it waits, so a call need not
	// wait for every late module once the card is there.
	WaitModules func(context.Context) error
	// WaitShare blocks until the guest image's share, which holds
	// iptables, is mounted, and says why it is not; nil when the
	// programs are in PATH already.
	WaitShare bootcfg.ShareWait
	// ProcSys is where sysctls are written; ProcSys by default. It is
	// read in the namespace's thread, so it must be procfs's sys for the
	// namespace to be the right one.
	ProcSys string
}

// Net configures one network namespace.
type Net struct {
	cfg Config
	log *slog.Logger

	start  sync.Once
	calls  chan call // to the goroutine that does the work (do)
	close  sync.Once
	closed chan struct{}
}

// New returns a Net for cfg; it touches nothing until asked to.
func New(cfg Config) *Net {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.UplinkDriver == "" {
		cfg.UplinkDriver = UplinkDriver
	}
	if cfg.WaitModules == nil {
		cfg.WaitModules = func(context.Context) error { return nil }
	}
	if cfg.ProcSys == "" {
		cfg.ProcSys = ProcSys
	}
	return &Net{cfg: cfg, log: cfg.Log, calls: make(chan call), closed: make(chan struct{})}
}

// Close ends the goroutine the calls run on (and its thread, for another
// namespace); calls after fail.
func (n *Net) Close() { n.close.Do(func() { close(n.closed) }) }

// errClosed is what a call on a closed Net gets.
var errClosed = errors.New("netconf: closed")

// do runs fn in the namespace, one call at a time, on the Net's own
// goroutine: netlink's reads take a 64 KiB buffer on the stack, which
// grows the stack of every goroutine that makes them, and the agent's
// memory is small; the calls are few, and one at a time none sees
// another's half-made change. For a namespace other than the agent's
// that goroutine keeps a thread of its own in it (a locked goroutine's
// thread ends with it, so no thread the process runs anything else on
// is ever in another namespace).
func (n *Net) do(fn func() error) error {
	n.start.Do(func() { go n.serve() })
	c := call{fn: fn, done: make(chan error, 1)}
	select {
	case n.calls <- c:
		return <-c.done
	case <-n.closed:
		return errClosed
	}
}

// call is a function for the Net's goroutine and where its result goes.
type call struct {
	fn   func() error
	done chan error
}

// serve runs the calls, in the namespace, for the process's life.
func (n *Net) serve() {
	var entered error
	if n.cfg.Netns != "" {
		runtime.LockOSThread()
		entered = enter(n.cfg.Netns)
	}
	for {
		select {
		case c := <-n.calls:
			if entered != nil {
				c.done <- entered
				continue
			}
			c.done <- c.fn()
		case <-n.closed:
			return
		}
	}
}

// enter moves the calling thread into the namespace path names.
func enter(path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	return nil
}

// link is a link as the calls below find it.
type link struct {
	index int
	name  string
}

// waitUplink returns the uplink, looking for it until it shows up or the
// late modules are loaded without it.
func (n *Net) waitUplink(ctx context.Context) (link, error) {
	loaded := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { loaded <- n.cfg.WaitModules(wctx) }()
	for {
		up, found, err := n.findUplink()
		if err != nil || found {
			return up, err
		}
		select {
		case werr := <-loaded:
			up, found, err := n.findUplink()
			switch {
			case err != nil || found:
				return up, err
			case ctx.Err() != nil:
				return link{}, ctx.Err()
			case werr != nil:
				return link{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "no network card (no %s link); loading modules: %w", n.cfg.UplinkDriver, werr)
			}
			return link{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "the VM has no network card: no %s link", n.cfg.UplinkDriver)
		case <-ctx.Done():
			return link{}, ctx.Err()
		case <-time.After(uplinkPoll):
		}
	}
}

// findUplink looks for the uplink once.
func (n *Net) findUplink() (up link, found bool, err error) {
	err = n.do(func() error {
		up, found, err = n.uplink()
		return err
	})
	return up, found, err
}

// uplink finds the first link, by index, whose driver is the uplink's.
// Called in the namespace.
func (n *Net) uplink() (link, bool, error) {
	links, err := listLinks()
	if err != nil {
		return link{}, false, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return link{}, false, fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	for _, l := range links {
		a := l.Attrs()
		if a.EncapType == "loopback" {
			continue
		}
		info, err := unix.IoctlGetEthtoolDrvinfo(fd, a.Name)
		if err != nil {
			// A link without ethtool (or gone meanwhile) is no card.
			continue
		}
		if unix.ByteSliceToString(info.Driver[:]) == n.cfg.UplinkDriver {
			return link{index: a.Index, name: a.Name}, true, nil
		}
	}
	return link{}, false, nil
}

// dumpRetries bounds how often a dump the kernel interrupted (the table
// changed while it was read) is read again.
const dumpRetries = 5

// retryDump calls dump until the kernel gives a consistent answer.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range dumpRetries {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// listLinks lists the namespace's links by index.
func listLinks() ([]netlink.Link, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	return links, nil
}

// linkByName finds a link by name; NotFound names field.
func linkByName(field, name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, errdefs.Errorf(errdefs.ErrNotFound, "%s: no link is called %q", field, name)
		}
		return nil, fmt.Errorf("%s: link %q: %w", field, name, err)
	}
	return l, nil
}

// setLoopbackUp brings lo up: a fresh namespace, or a VM's, starts with it
// down.
func setLoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// writeSysctl writes value to the sysctl name (slash-separated, below
// ProcSys). Called in the namespace: net sysctls are the opening thread's
// namespace's.
func (n *Net) writeSysctl(name, value string) error {
	f, err := os.OpenFile(filepath.Join(n.cfg.ProcSys, filepath.FromSlash(name)), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sysctl %s = %s: %w", name, value, err)
	}
	return nil
}
