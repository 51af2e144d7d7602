// Package daemon is cabind's composition root: it builds the domain (the
// VM manager, the guest image, the per-VM resources, the link to guests),
// registers a fixed list of API edges on the socket server and serves until
// told to stop. It holds no API and no domain logic of its own.
package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	cabinpb "github.com/cabinvm/cabin/api/cabin/v1"
	conciergepb "github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/diskimage"
	"github.com/cabinvm/cabin/internal/edge/cabinv1"
	"github.com/cabinvm/cabin/internal/edge/concierge"
	"github.com/cabinvm/cabin/internal/edge/listeners"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/forward"
	"github.com/cabinvm/cabin/internal/guestimage"
	"github.com/cabinvm/cabin/internal/guestlink"
	"github.com/cabinvm/cabin/internal/hostcgroup"
	"github.com/cabinvm/cabin/internal/hostinfo"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/imageshare"
	"github.com/cabinvm/cabin/internal/network"
	"github.com/cabinvm/cabin/internal/ociimage"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/relay"
	"github.com/cabinvm/cabin/internal/relay/readahead"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/server"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

// DefaultMemoryMiB is the RAM of VMs that do not ask for an amount.
const DefaultMemoryMiB = 512

// Config configures the daemon.
type Config struct {
	Socket string
	// SocketGroup is the group that may connect to Socket; none but root
	// may when empty, or when the group does not exist (logged).
	SocketGroup string
	StateDir    string
	// AgentBinary is the static cabin-agent put into the guest image.
	AgentBinary string
	// RuntimeBinary is the static cabin-runtime put into the guest image
	// beside the agent, which runs it to manage containers.
	RuntimeBinary string
	// Kernel is the guest kernel: guestimage.KernelAuto (the default when
	// empty), KernelGeneric, KernelMinimal or a vmlinux's absolute path.
	Kernel string
	// QEMUBinary is the QEMU program; qemu.DefaultBinary when empty.
	QEMUBinary string
	// Accel is "auto", "kvm" or "tcg".
	Accel string
	// Net is the network of VMs that ask for none: "auto" (tap where
	// cabind may make taps, else user), "tap", "user" or "none".
	Net string
	// NetPool is where VMs' taps take their /30s from: a CIDR or a range
	// FIRST-LAST; network.DefaultPool when empty.
	NetPool          string
	DefaultMemoryMiB int
	// MetricsAddress is where Prometheus metrics are served over HTTP
	// (host:port); none are when empty.
	MetricsAddress string
	// Ready, when set, is called once the socket serves (systemd's
	// readiness notice).
	Ready func()
	Log   *slog.Logger
}

// Run serves until ctx ends. VMs keep running after it returns; the next
// Run on the same state dir re-adopts them.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	root, err := statedir.New(cfg.StateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root.Dir(), 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := root.Check(os.Geteuid()); err != nil {
		return err
	}
	gid, err := socketGroup(cfg.SocketGroup, log)
	if err != nil {
		return err
	}
	unlock, err := lockStateDir(ctx, root, lockWait, log)
	if err != nil {
		return err
	}
	defer unlock()
	accel, accelReason, err := chooseAccel(cfg.Accel, log)
	if err != nil {
		return err
	}
	// VMs asking for KVM are refused with the reason it was not detected;
	// an accelerator chosen by setting trusts the operator instead.
	var noKVM string
	if accel != hypervisor.AccelKVM && (cfg.Accel == "" || cfg.Accel == "auto") {
		noKVM = accelReason
	}
	host, err := hostLimits()
	if err != nil {
		return err
	}
	host.NoKVM = noKVM
	if cfg.DefaultMemoryMiB == 0 {
		cfg.DefaultMemoryMiB = DefaultMemoryMiB
	}

	vmNet, err := setUpNetwork(cfg, root, log)
	if err != nil {
		return err
	}
	launcher := &qemu.Launcher{Binary: cfg.QEMUBinary, Log: log, VhostNet: qemu.HaveVhostNet()}
	if accel == hypervisor.AccelTCG {
		// Measure now rather than on the first start, which is timed.
		if khz, err := qemu.HostTSCKHz(); err != nil {
			log.Warn("cannot measure the tsc frequency for tcg guests", "err", err)
		} else {
			launcher.TSCKHz = khz
			log.Info("measured tsc frequency for tcg guests", "khz", khz)
		}
	}
	if cfg.Kernel == "" {
		cfg.Kernel = guestimage.KernelAuto
	}
	kernel, why, err := guestimage.KernelChoice(cfg.Kernel, guestimage.MinimalKernel)
	if err != nil {
		return err
	}
	if kernel == "" {
		log.Info("guest kernel: Debian's linux-image-amd64", "setting", cfg.Kernel, "why", why)
	} else {
		log.Info("guest kernel: a file", "setting", cfg.Kernel, "path", kernel, "why", why)
	}
	builder := &guestimage.Builder{Root: root, AgentBinary: cfg.AgentBinary, RuntimeBinary: cfg.RuntimeBinary, Kernel: kernel, Log: log}
	// The services guests call, on their channels only.
	guests := channel.NewServer(log)
	defer guests.Stop()
	// A VM's port forwards reach its guest through the manager, which
	// is made with them.
	forwards := &forward.Resource{}
	// Disk images: before any VM is adopted or started, temporaries an
	// earlier cabind left are removed and its operations marked failed.
	disks, err := diskimage.New(diskimage.Options{Root: root, Log: log})
	if err != nil {
		return err
	}
	if err := disks.Recover(); err != nil {
		return err
	}
	defer disks.Close()
	// OCI images: Open clears what an import cut short left.
	ociImages, err := ociimage.Open(ctx, root.OCIImagesDir(), ociimage.Options{Log: log})
	if err != nil {
		return err
	}
	// VMs' host cgroups, with the restrictions set before a restart.
	cpu, err := hostcgroup.New(hostcgroup.Options{Restrictions: root.CPURestrictions(), Log: log})
	if err != nil {
		return err
	}
	ahead := newReadAhead(root)
	m, err := vmm.New(vmm.Options{
		Root:     root,
		Launcher: launcher,
		// What every VM holds on the host, in the order it is prepared.
		Resources: []resource.Kind{
			guestimage.Resource{Builder: builder},
			imageshare.Resource{Store: ociImages},
			consolelog.Resource{},
			guestlink.Ports{},
			vmNet,
			forwards,
			cpu,
			diskimage.Resource{Store: disks},
			readAheadKind{ahead: ahead},
		},
		Guests:           &guestlink.Dialer{Host: guests},
		Accel:            accel,
		Host:             host,
		DefaultMemoryMiB: cfg.DefaultMemoryMiB,
		Timezone:         hostTimezone(),
		DNS:              hostDNS(log),
		Log:              log,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	// Before any build: a generation of the container root filesystems
	// is pruned only once no VM the records know of shares it.
	builder.InUse = m.SharedDirs
	forwards.Dial = m.DialPort
	disks.StopVM = func(ctx context.Context, owner, name string) error {
		return m.StopFor(ctx, vmm.Key{Owner: owner, Name: name}, vmm.StopDiskDestroyed)
	}
	disks.LiveResize = func(ctx context.Context, owner, name string, size uint64) error {
		return m.ResizeDisk(ctx, vmm.Key{Owner: owner, Name: name}, size)
	}
	followDNS(ctx, m, log)
	vmtools.RegisterStartupListenerServer(guests, listeners.NewStartup(m))

	relay := relayTo(m, ahead)
	srv := server.New(log, relay.ServerOptions()...)
	register(srv, services{m: m, builder: builder, disks: disks, cpu: cpu, quota: cpu, oci: ociImages, host: &hostinfo.Source{
		QEMUBinary: cfg.QEMUBinary, Accel: accel, AccelReason: accelReason,
		StateDir: root.Dir(), ImageDir: root.ImageDir(), AgentBinary: cfg.AgentBinary,
		Image: builder.Cached, Network: vmNet.Mode(),
		Running: func() int { return len(m.ListAll()) },
	}})
	if cfg.MetricsAddress != "" {
		mctx, stopMetrics := context.WithCancel(ctx)
		defer stopMetrics()
		if err := serveMetrics(mctx, cfg.MetricsAddress, m, srv, relay, builder, log); err != nil {
			return err
		}
	}

	lis, err := server.Listen(cfg.Socket, gid)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	if err := m.Adopt(ctx); err != nil {
		lis.Close()
		return err
	}
	log.Info("cabind serving", "socket", cfg.Socket, "state_dir", root.Dir(), "accel", accel, "network", vmNet.Mode())
	if cfg.Ready != nil {
		cfg.Ready()
	}
	defer log.Info("cabind stopped; VMs keep running")
	return srv.Serve(ctx, lis)
}

// setUpNetwork sets up the network VMs get: the default mode, the pool,
// and where taps are the default, NAT and forwarding.
func setUpNetwork(cfg Config, root statedir.Root, log *slog.Logger) (*network.Resource, error) {
	pool := network.DefaultPool
	if cfg.NetPool != "" {
		p, err := network.ParsePool(cfg.NetPool)
		if err != nil {
			return nil, errdefs.InvalidArgument("net-pool", err.Error())
		}
		pool = p
	}
	return network.New(network.Options{Mode: cfg.Net, Pool: pool, Allocations: root.NetworkAllocations(), Log: log})
}

// socketGroup looks the socket's group up: its gid, or -1 for root's when
// name is empty or names no group.
func socketGroup(name string, log *slog.Logger) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		log.Warn("the socket's group does not exist: only root may use cabind (create it with: groupadd --system "+name+")", "group", name)
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("socket group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("socket group %q: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// services are the domain services the API edges serve.
type services struct {
	m       *vmm.Manager
	builder *guestimage.Builder
	disks   *diskimage.Store
	cpu     concierge.CPURestrictor
	quota   cabinv1.QuotaRestrictor
	host    *hostinfo.Source
	oci     *ociimage.Store
}

// register registers the API edges cabind serves on its socket: a fixed
// list. The relay is installed with the server (relayTo).
func register(srv grpc.ServiceRegistrar, d services) {
	conciergepb.RegisterVmConciergeServer(srv, concierge.New(d.m, concierge.Options{Disks: d.disks, CPU: d.cpu}))
	cabinpb.RegisterVmsServer(srv, cabinv1.NewVms(d.m))
	cabinpb.RegisterEventsServer(srv, cabinv1.NewEvents(d.m, d.disks))
	cabinpb.RegisterDisksServer(srv, cabinv1.NewDisks(d.disks))
	cabinpb.RegisterImagesServer(srv, cabinv1.NewImages(d.builder))
	cabinpb.RegisterOciImagesServer(srv, cabinv1.NewOciImages(d.oci))
	cabinpb.RegisterForwardsServer(srv, cabinv1.NewForwards(d.m))
	cabinpb.RegisterSystemServer(srv, cabinv1.NewSystem(d.host))
	cabinpb.RegisterCpuServer(srv, cabinv1.NewCPU(d.quota))
	// Reflection lets grpcurl and friends work without proto files; it
	// describes the guest services too, as their files are linked in.
	if s, ok := srv.(reflection.GRPCServer); ok {
		reflection.Register(s)
	}
}

// relayTo is the relay of calls naming a VM to that VM's agent, which
// reads output ahead into ahead.
func relayTo(m *vmm.Manager, ahead *readahead.Streams) *relay.Relay {
	return relay.New(func(ctx context.Context, owner, name string) (grpc.ClientConnInterface, error) {
		return agentConn(ctx, m, owner, name)
	}, ahead)
}

// agentLink is what the relay needs of a VM's guest link
// (guestlink.Link): the connection to its agent.
type agentLink interface {
	Conn(ctx context.Context) (grpc.ClientConnInterface, error)
}

// agentConn is the connection to the agent of the VM (owner, name) that
// cabind's relay forwards calls on.
func agentConn(ctx context.Context, m *vmm.Manager, owner, name string) (grpc.ClientConnInterface, error) {
	key := vmm.Key{Owner: owner, Name: name}
	if err := key.Validate(); err != nil {
		return nil, err
	}
	// A VM re-adopted a moment ago may still be reconnecting.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	g, err := m.Guest(ctx, key)
	if err != nil {
		return nil, err
	}
	l, ok := g.(agentLink)
	if !ok {
		return nil, fmt.Errorf("vm %s: its guest link carries no calls: %w", key, errdefs.ErrInternal)
	}
	return l.Conn(ctx)
}

// lockWait is how long a starting cabind waits for the one that holds its
// state dir to let go: a cabind that was just told to stop takes a moment
// (up to 2 s for its streams), and a restart should not fail for it.
const lockWait = 10 * time.Second

// lockStateDir makes sure one daemon owns a state dir, waiting up to wait
// for another to let go of it.
func lockStateDir(ctx context.Context, root statedir.Root, wait time.Duration, log *slog.Logger) (func(), error) {
	f, err := os.OpenFile(root.LockFile(), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for logged := false; ; logged = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock state dir: %w", err)
		}
		if !logged && log != nil {
			log.Info("waiting for the cabind that holds the state dir to exit", "state_dir", root.Dir(), "for", wait)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("state dir %s is in use by another cabind: %w", root.Dir(), errdefs.ErrFailedPrecondition)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// chooseAccel picks the accelerator for VMs that do not ask for one, and
// says why: what was detected, or that the setting chose it.
func chooseAccel(setting string, log *slog.Logger) (accel hypervisor.Accel, reason string, err error) {
	accel, err = qemu.ParseAccel(setting)
	if err != nil {
		return "", "", err
	}
	if accel != "" {
		log.Info("accelerator chosen by setting", "accel", accel)
		return accel, "chosen by cabind's --accel", nil
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "", "", fmt.Errorf("detect accelerator: %w", err)
	}
	defer f.Close()
	accel, reason, err = qemu.DetectAccel(f)
	if err != nil {
		return "", "", fmt.Errorf("detect accelerator: %w", err)
	}
	log.Info("accelerator detected", "accel", accel, "reason", reason)
	return accel, reason, nil
}

// hostLimits reads what the host has to give.
func hostLimits() (vmm.Host, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return vmm.Host{}, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return vmm.Host{}, fmt.Errorf("meminfo: %w", err)
			}
			return vmm.Host{CPUs: runtime.NumCPU(), MemoryMiB: kb / 1024}, nil
		}
	}
	return vmm.Host{}, errors.New("meminfo: no MemTotal")
}

// hostTimezone names the host's time zone, for guests to share: Debian's
// /etc/timezone, else where /etc/localtime links into a zoneinfo tree.
// Empty when neither says; the guest then stays on UTC.
func hostTimezone() string {
	name := ""
	if b, err := os.ReadFile("/etc/timezone"); err == nil {
		name = strings.TrimSpace(string(b))
	} else if target, err := os.Readlink("/etc/localtime"); err == nil {
		if _, rest, ok := strings.Cut(target, "zoneinfo/"); ok {
			name = rest
		}
	}
	// The guest checks the name too; this only keeps junk out of its log.
	if name == "" || strings.Contains(name, "..") || strings.ContainsAny(name, " \t\n") || strings.HasPrefix(name, "/") {
		return ""
	}
	return name
}
