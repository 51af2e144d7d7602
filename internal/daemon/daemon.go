// Package daemon is cabind: it serves cabin's public gRPC APIs on a unix
// socket — VmConcierge, cabin.v1 (Vms, Events, Images), and the relay to
// guest agents — over the VM manager, and the host's services to guests on
// their channels. The services here only convert messages and errors.
package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/image"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/relay"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/vmm"
)

// Defaults.
const (
	DefaultSocket    = "/run/cabin/cabind.sock"
	DefaultStateDir  = "/var/lib/cabin"
	DefaultMemoryMiB = 512
)

// Config configures the daemon.
type Config struct {
	Socket   string
	StateDir string
	// AgentBinary is the static cabin-agent put into the guest image.
	AgentBinary string
	// RuntimeBinary is the static cabin-runtime put into the guest image
	// beside the agent, which runs it to manage containers.
	RuntimeBinary string
	// QEMUBinary is the QEMU program; qemu.DefaultBinary when empty.
	QEMUBinary string
	// Accel is "auto", "kvm" or "tcg".
	Accel            string
	DefaultMemoryMiB int
	Log              *slog.Logger
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
	unlock, err := lockStateDir(ctx, root, lockWait, log)
	if err != nil {
		return err
	}
	defer unlock()
	accel, noKVM, err := chooseAccel(cfg.Accel, log)
	if err != nil {
		return err
	}
	host, err := hostLimits()
	if err != nil {
		return err
	}
	host.NoKVM = noKVM
	if cfg.DefaultMemoryMiB == 0 {
		cfg.DefaultMemoryMiB = DefaultMemoryMiB
	}

	launcher := &qemu.Launcher{Binary: cfg.QEMUBinary, Log: log}
	if accel == hypervisor.AccelTCG {
		// Measure now rather than on the first start, which is timed.
		if khz, err := qemu.HostTSCKHz(); err != nil {
			log.Warn("cannot measure the tsc frequency for tcg guests", "err", err)
		} else {
			launcher.TSCKHz = khz
			log.Info("measured tsc frequency for tcg guests", "khz", khz)
		}
	}
	builder := &image.Builder{Root: root, AgentBinary: cfg.AgentBinary, RuntimeBinary: cfg.RuntimeBinary, Log: log}
	guests := channel.NewServer(log)
	m, err := vmm.New(vmm.Options{
		Root:             root,
		Launcher:         launcher,
		Images:           imageSource{builder},
		Guests:           guests,
		Accel:            accel,
		Host:             host,
		DefaultMemoryMiB: cfg.DefaultMemoryMiB,
		Timezone:         hostTimezone(),
		Log:              log,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	// Before any build: a generation of the container root filesystems
	// is pruned only once no VM the records know of shares it.
	builder.InUse = m.SharedDirs
	vmtools.RegisterStartupListenerServer(guests, &startupListener{m: m})
	defer guests.Stop()

	// Ends when cabind stops, and with it the streams in flight (an exec,
	// an events watch), each with a status that says so.
	stopping, stop := context.WithCancel(context.Background())
	defer stop()
	r := relay.New(func(ctx context.Context, owner, name string) (grpc.ClientConnInterface, error) {
		key, err := checkKey(owner, name)
		if err != nil {
			return nil, err
		}
		// A VM re-adopted a moment ago may still be reconnecting.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return m.Agent(ctx, key)
	})
	// Logging goes first so relayed calls are logged too.
	opts := append([]grpc.ServerOption{
		grpc.Creds(peerCreds{}),
		// Fixed windows: no BDP pings from this end. Clients are local,
		// on a unix socket; there is no bandwidth to probe.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		// Calls run on goroutines kept for the purpose, whose stacks have
		// already grown to what a call needs, not on a new one each.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.ChainUnaryInterceptor(logUnary(log)),
		grpc.ChainStreamInterceptor(logStream(log), endOnStop(stopping)),
	}, r.ServerOptions()...)
	srv := grpc.NewServer(opts...)
	c := &conciergeServer{m: m}
	concierge.RegisterVmConciergeServer(srv, c)
	cabinv1.RegisterVmsServer(srv, &vmsServer{c: c})
	cabinv1.RegisterEventsServer(srv, &eventsServer{m: m})
	cabinv1.RegisterImagesServer(srv, &imagesServer{b: builder})
	// Reflection lets grpcurl and friends work without proto files; it
	// describes the guest services too, as their files are linked in.
	reflection.Register(srv)

	lis, err := listen(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	if err := m.Adopt(ctx); err != nil {
		lis.Close()
		return err
	}
	log.Info("cabind serving", "socket", cfg.Socket, "state_dir", root.Dir(), "accel", accel)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("cabind stopping; VMs keep running")
	stop()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		// A handler that does not heed its context.
		srv.Stop()
	}
	return nil
}

// errStopping is the status of a stream that cabind ended as it stopped.
var errStopping = status.Error(codes.Unavailable, "cabind is stopping")

// endOnStop ends each stream when stopping does, with errStopping: streams
// such as an events watch or an exec never end by themselves, and their
// callers should hear why theirs did rather than see the connection drop.
func endOnStop(stopping context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		defer context.AfterFunc(stopping, cancel)()
		err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		// Whatever the handler made of its context ending (the events
		// watch returns nil), the caller hears that cabind stopped.
		if stopping.Err() != nil && ctx.Err() != nil {
			return errStopping
		}
		return err
	}
}

// contextStream is a ServerStream with a context of its own.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// lockWait is how long a starting cabind waits for the one that holds its
// state dir to let go: a cabind that was just told to stop takes a moment
// (up to 2 s for its streams), and a restart should not fail for it.
const lockWait = 10 * time.Second

// lockStateDir makes sure one daemon owns a state dir, waiting up to wait
// for another to let go of it.
func lockStateDir(ctx context.Context, root statedir.Root, wait time.Duration, log *slog.Logger) (func(), error) {
	f, err := os.OpenFile(root.LockFile(), os.O_RDWR|os.O_CREATE, 0o600)
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

// chooseAccel picks the accelerator for VMs that do not ask for one. When
// it detected that KVM cannot run guests here, noKVM says why, and VMs
// asking for KVM are refused with that reason; a setting of "kvm" trusts
// the operator instead.
func chooseAccel(setting string, log *slog.Logger) (accel hypervisor.Accel, noKVM string, err error) {
	accel, err = qemu.ParseAccel(setting)
	if err != nil {
		return "", "", err
	}
	if accel != "" {
		log.Info("accelerator chosen by setting", "accel", accel)
		return accel, "", nil
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "", "", fmt.Errorf("detect accelerator: %w", err)
	}
	defer f.Close()
	accel, reason, err := qemu.DetectAccel(f)
	if err != nil {
		return "", "", fmt.Errorf("detect accelerator: %w", err)
	}
	log.Info("accelerator detected", "accel", accel, "reason", reason)
	if accel != hypervisor.AccelKVM {
		noKVM = reason
	}
	return accel, noKVM, nil
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

// listen opens the API socket, replacing a stale one but never one a live
// daemon answers on.
func listen(path string) (net.Listener, error) {
	if len(path) > statedir.MaxSocketPath {
		return nil, fmt.Errorf("socket path %q: longer than %d bytes", path, statedir.MaxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return nil, fmt.Errorf("socket %s: another daemon is listening: %w", path, errdefs.ErrFailedPrecondition)
	}
	os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		lis.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	return lis, nil
}

func logUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !log.Enabled(ctx, slog.LevelDebug) {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		log.Debug("rpc", "method", info.FullMethod, "code", errdefs.Code(err).String(), "took", time.Since(start))
		return resp, err
	}
}

func logStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !log.Enabled(ss.Context(), slog.LevelDebug) {
			return handler(srv, ss)
		}
		start := time.Now()
		err := handler(srv, ss)
		log.Debug("stream", "method", info.FullMethod, "code", errdefs.Code(err).String(), "took", time.Since(start))
		return err
	}
}
