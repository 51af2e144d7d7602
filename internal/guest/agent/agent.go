// Package agent composes the guest agent: one gRPC server carrying the
// guest services (Maitred, grpc.Health, cabin.v1.Exec, grpc.AgentService,
// the last and the first sharing the VM's network through netconf),
// served over every session a host opens, and the VmReady call that tells
// the host the agent is there. It is the same whether the session runs
// over the VM's virtio-serial port or over a unix socket in development.
package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	portfwdv1 "github.com/cabinvm/cabin/api/cabin/portfwd/v1"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/channel"
	"github.com/cabinvm/cabin/internal/guest/cgroup"
	"github.com/cabinvm/cabin/internal/guest/execsvc"
	"github.com/cabinvm/cabin/internal/guest/health"
	guestkata "github.com/cabinvm/cabin/internal/guest/kata"
	"github.com/cabinvm/cabin/internal/guest/maitred"
	"github.com/cabinvm/cabin/internal/guest/memtrim"
	"github.com/cabinvm/cabin/internal/guest/netconf"
	"github.com/cabinvm/cabin/internal/guest/portfwd"
	"github.com/cabinvm/cabin/internal/guestinit"
	"github.com/cabinvm/cabin/internal/reaper"
)

// stopGrace bounds how long stopping waits for RPCs in flight: long enough
// for a Shutdown reply to reach the host, short enough that a process
// someone is waiting on does not hold up a power-off.
const stopGrace = 2 * time.Second

// The Execs' processes are a group the agent ends on its own when it is not
// PID 1.
var _ guestinit.Group = (*execsvc.Service)(nil)

// Config is what the agent needs from its main.
type Config struct {
	Log    *slog.Logger
	Reaper *reaper.Reaper
	// PowerOff is what Maitred's Shutdown does after replying.
	PowerOff func()
	// WaitModules blocks until the late kernel modules are loaded (see
	// maitred.Config); nil when there are none.
	WaitModules func(context.Context) error
	// WaitShare blocks until the guest image's share (bootcfg.RootfsMount:
	// cabin-runtime, the programs, zoneinfo) is mounted, and says why it
	// is not; nil when those files are where they are looked for already.
	WaitShare bootcfg.ShareWait
	// OnReady is called once, when the first VmReady call has ended,
	// answered or not: work that must not slow the boot can start then.
	OnReady func()
	// Terminate ends processes when the agent stops, before its server
	// does: the server's stop cancels the calls still running, and an Exec
	// cancelled kills its process outright. Run first, it lets them end on
	// SIGTERM, with a grace before SIGKILL, and their calls report how. As
	// PID 1 it is guestinit.KillAll; nil ends the processes of the Execs in
	// progress the same way.
	Terminate func(ctx context.Context)
	// Cgroups, if not nil, is the guest's cgroup tree, made by PID 1 with
	// its own score at guestinit.AgentOOMScoreAdj: containers are kept
	// within its containers' parent and each Exec gets a session there.
	// Without it (an agent that is not PID 1) specs are run as sent and
	// an Exec's end reaches its process group only.
	Cgroups *cgroup.Tree
}

// Agent serves the guest services.
type Agent struct {
	log       *slog.Logger
	srv       *channel.Server
	maitred   *maitred.Maitred
	ready     sync.Once
	onReady   func()
	terminate func(ctx context.Context)
	// stopping turns new sessions away once the server is stopping.
	stopping atomic.Bool
	stopOnce sync.Once
}

// New builds the agent and registers its services.
func New(cfg Config) *Agent {
	if cfg.OnReady == nil {
		cfg.OnReady = func() {}
	}
	execCfg := execsvc.Config{
		Reaper: cfg.Reaper,
		Log:    cfg.Log.With("service", "exec"),
		Moved:  memtrim.New(memtrim.DefaultThreshold).Moved,
	}
	var bounds *guestkata.Bounds
	if t := cfg.Cgroups; t != nil {
		execCfg.Sessions = t.Sessions()
		bounds = &guestkata.Bounds{
			CgroupParent:   t.ContainersPath(),
			Memory:         t.Plan().Containers.Memory,
			Pids:           t.Plan().Containers.Pids,
			MinOOMScoreAdj: guestinit.AgentOOMScoreAdj + 1,
		}
	}
	execCfg.WaitShare = cfg.WaitShare
	execSvc := execsvc.New(execCfg)
	// One for both services: Maitred configures the card the host gives,
	// Kata's clients the links, routes and rules of the same namespace.
	network := netconf.New(netconf.Config{
		Log:         cfg.Log.With("service", "network"),
		Reaper:      cfg.Reaper,
		WaitModules: cfg.WaitModules,
		WaitShare:   cfg.WaitShare,
	})
	if cfg.Terminate == nil {
		cfg.Terminate = func(ctx context.Context) {
			guestinit.Terminate(ctx, cfg.Log, execSvc, guestinit.KillGrace)
		}
	}
	a := &Agent{
		log: cfg.Log,
		srv: channel.NewServer(cfg.Log,
			// One shared buffer instead of 32 KiB per idle connection:
			// the agent's memory budget is small.
			grpc.SharedWriteBuffer(true),
			grpc.ReadBufferSize(8<<10),
		),
		maitred: maitred.New(maitred.Config{
			Log:         cfg.Log.With("service", "maitred"),
			Reaper:      cfg.Reaper,
			PowerOff:    cfg.PowerOff,
			WaitModules: cfg.WaitModules,
			WaitShare:   cfg.WaitShare,
			Net:         network,
		}),
		onReady:   cfg.OnReady,
		terminate: cfg.Terminate,
	}
	sandbox := guestkata.New(guestkata.Config{
		Log:         cfg.Log.With("service", "kata"),
		Reaper:      cfg.Reaper,
		WaitModules: cfg.WaitModules,
		WaitShare:   cfg.WaitShare,
		Net:         network,
		Bounds:      bounds,
	})
	agentSvc := guestkata.NewService(sandbox)
	// Every service's calls are counted, for AgentService's GetMetrics.
	reg := agentSvc.CountCalls(a.srv)
	vmtools.RegisterMaitredServer(reg, maitred.NewService(a.maitred))
	kata.RegisterHealthServer(reg, health.Service{})
	execv1.RegisterExecServer(reg, execSvc)
	portfwdv1.RegisterGuestPortsServer(reg, portfwd.New(cfg.Log.With("service", "portfwd")))
	kata.RegisterAgentServiceServer(reg, agentSvc)
	// The same containers: what AgentService has no call for.
	containersv1.RegisterContainersServer(reg, guestkata.NewContainersService(sandbox))
	return a
}

// Close stops what the agent keeps running in the background (respawning
// processes). Call it once serving has ended.
func (a *Agent) Close() { a.maitred.Close() }

// ServePorts serves sessions over the VM's agent port and unary calls over
// its RPC port, one host at a time each, until ctx ends; then it stops the
// server gracefully (bounded) before the connections close, so replies in
// flight, Shutdown's among them, reach the host.
func (a *Agent) ServePorts(ctx context.Context, p, rpc *channel.Port) error {
	// The ports' connections must outlive ctx by the graceful stop.
	portCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		a.stop()
		cancel()
	})
	defer stop()
	go rpc.ServeConns(portCtx, func(conn net.Conn) {
		if err := a.srv.ServeUnary(conn); err != nil {
			a.log.Debug("rpc port", "err", err)
		}
	})
	err := p.Serve(portCtx, a.serveSession)
	a.stop()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ServeListener serves every connection l accepts as its own session, as
// the agent port does with each host, until ctx ends; then it stops like
// ServePorts.
func (a *Agent) ServeListener(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		sessions = map[*channel.Session]bool{}
		err      error
	)
	for {
		var conn net.Conn
		conn, err = l.Accept()
		if err != nil {
			break
		}
		sess, serr := channel.ServerSession(conn, a.log)
		if serr != nil {
			conn.Close()
			a.log.Warn("start session", "err", serr)
			continue
		}
		mu.Lock()
		sessions[sess] = true
		mu.Unlock()
		wg.Go(func() {
			a.serveSession(sess)
			sess.Close()
			mu.Lock()
			delete(sessions, sess)
			mu.Unlock()
		})
	}
	a.stop()
	mu.Lock()
	for sess := range sessions {
		sess.Close()
	}
	mu.Unlock()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serveSession serves gRPC on sess and tells the host, over a stream of the
// same session, that the agent is ready. It returns when the session ends
// or the agent stops.
func (a *Agent) serveSession(sess *channel.Session) {
	if a.stopping.Load() {
		return
	}
	a.log.Debug("session started")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// A session that ends cuts VmReady's retries short.
		select {
		case <-sess.CloseChan():
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		announce(ctx, sess, a.log)
		a.ready.Do(a.onReady)
	}()
	lis := newListener(sess)
	if err := a.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		a.log.Debug("session ended", "err", err)
	}
}

// stop ends processes (Config.Terminate) and then stops the gRPC server,
// waiting up to stopGrace for RPCs in flight. Every caller returns once it
// has stopped.
func (a *Agent) stop() { a.stopOnce.Do(a.stopServer) }

func (a *Agent) stopServer() {
	a.stopping.Store(true)
	// What Terminate ends must stay dead.
	a.maitred.Close()
	a.terminate(context.Background())
	done := make(chan struct{})
	go func() {
		a.srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopGrace):
		a.log.Warn("RPCs still running after stop grace; cutting them off")
		a.srv.Stop()
		<-done
	}
}

// listener is a session as gRPC's listener. Closing it only stops
// accepting: the streams it gave out carry replies still being written,
// and closing the session would cut them off.
type listener struct {
	sess      *channel.Session
	closed    chan struct{}
	closeOnce sync.Once
}

func newListener(sess *channel.Session) *listener {
	return &listener{sess: sess, closed: make(chan struct{})}
}

func (l *listener) Accept() (net.Conn, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	st, err := l.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		default:
			return nil, err
		}
	}
	return st, nil
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *listener) Addr() net.Addr { return l.sess.Addr() }
