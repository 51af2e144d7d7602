package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/client"
	"github.com/cabinvm/cabin/internal/statedir"
)

// The network measurements' set-up. Everything is in namespaces the bench
// makes and deletes: a cabind of its own with --net tap, its VM's tap, NAT
// table and forwarding sysctl in one, and a veth pair between two more.
// The host's own interfaces, routes, nftables and sysctls are never
// touched, and no traffic goes anywhere but to those namespaces'
// addresses and loopback.
const (
	netVM = "net"
	// perfPort is where cabin-netperf serves, in the guest and in the
	// veth's server namespace; forwardPort the forward's host port, on
	// the tap namespace's loopback.
	perfPort    = 5201
	forwardPort = 15201
	// guestNetperf is where the program goes in the guest.
	guestNetperf = "/tmp/cabin-netperf"
	// readyWait bounds the wait for a server to answer its first
	// connection.
	readyWait = 60 * time.Second
)

// The veth pair's ends (TEST-NET-1, which no real network uses).
var (
	vethServer = netip.MustParseAddr("192.0.2.1")
	vethClient = netip.MustParseAddr("192.0.2.2")
)

// netEnv is what the network measurements run on.
type netEnv struct {
	netperf string
	state   string
	// tap holds the cabind and its VM; client and server hold the veth
	// pair's ends.
	tap, client, server netns
	made                []netns
	cabind              *exec.Cmd
	cabindDone          chan struct{}
	cc                  *grpc.ClientConn
	servers             []*exec.Cmd
	guest               netip.Addr
}

// route is a way to a server a client can take: the namespace the
// client runs in, and the address it connects to.
type route struct {
	name string
	ns   netns
	addr string
}

func (n *netEnv) veth() route {
	return route{"veth", n.client, netip.AddrPortFrom(vethServer, perfPort).String()}
}

func (n *netEnv) direct() route {
	return route{"tap", n.tap, netip.AddrPortFrom(n.guest, perfPort).String()}
}

func (n *netEnv) forward() route {
	return route{"forward", n.tap, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), forwardPort).String()}
}

func setupNet(ctx context.Context, e *env, o options) (_ *netEnv, err error) {
	for _, p := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("needs %s (iproute2, util-linux): %w", p, err)
		}
	}
	n := &netEnv{netperf: filepath.Join(o.bin, "cabin-netperf"), state: filepath.Join(e.dir, "netstate")}
	if _, err := os.Stat(n.netperf); err != nil {
		return nil, fmt.Errorf("cabin-netperf not found beside cabin-bench (run make build): %w", err)
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	for _, ns := range []struct {
		to   *netns
		name string
	}{{&n.tap, "tap"}, {&n.server, "srv"}, {&n.client, "cli"}} {
		if *ns.to, err = addNetns(fmt.Sprintf("cbench-%d-%s", os.Getpid(), ns.name)); err != nil {
			return nil, err
		}
		n.made = append(n.made, *ns.to)
	}
	if err := n.startVeth(ctx); err != nil {
		return nil, fmt.Errorf("veth: %w", err)
	}
	if err := n.startCabind(ctx, e, o); err != nil {
		return nil, fmt.Errorf("cabind in %s: %w", n.tap, err)
	}
	if err := n.startGuest(ctx); err != nil {
		return nil, fmt.Errorf("guest: %w", err)
	}
	return n, nil
}

// startVeth links the client and server namespaces with a veth pair and
// serves on the server's end.
func (n *netEnv) startVeth(ctx context.Context) error {
	if err := n.server.ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", string(n.client)); err != nil {
		return err
	}
	for _, end := range []struct {
		ns   netns
		dev  string
		addr netip.Addr
	}{{n.server, "veth0", vethServer}, {n.client, "veth1", vethClient}} {
		if err := end.ns.ip("addr", "add", netip.PrefixFrom(end.addr, 30).String(), "dev", end.dev); err != nil {
			return err
		}
		if err := end.ns.ip("link", "set", end.dev, "up"); err != nil {
			return err
		}
	}
	srv := n.server.command(context.Background(), n.netperf, "serve", "-addr", n.veth().addr)
	srv.Stderr = os.Stderr
	// Its own process group: a ^C at the terminal is the bench's to
	// handle, and the bench ends it.
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := srv.Start(); err != nil {
		return err
	}
	n.servers = append(n.servers, srv)
	_, err := n.run(ctx, n.veth(), "wait", "-for", readyWait.String())
	return err
}

// startCabind runs a cabind with --net tap in the tap namespace, on a
// state dir of its own holding a copy of the bench cabind's guest image:
// nothing is downloaded, and there is nothing to download it with there.
func (n *netEnv) startCabind(ctx context.Context, e *env, o options) error {
	if err := os.MkdirAll(n.state, 0o700); err != nil {
		return err
	}
	first, err := statedir.New(filepath.Join(e.dir, "state"))
	if err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", first.ImageDir(), n.state).CombinedOutput(); err != nil {
		return fmt.Errorf("copy the guest image: %w: %s", err, strings.TrimSpace(string(out)))
	}
	sock := filepath.Join(e.dir, "net.sock")
	n.cabind = n.tap.command(context.Background(), filepath.Join(o.bin, "cabind"), "--socket", sock,
		"--state-dir", n.state, "--agent", filepath.Join(o.bin, "cabin-agent"), "--config", "", "--kernel", o.kernel,
		"--qemu", o.qemu, "--net", "tap", "--log-level", "warn")
	n.cabind.Stderr = os.Stderr
	n.cabind.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cabind.Start(); err != nil {
		return err
	}
	n.cabindDone = make(chan struct{})
	go func() {
		n.cabind.Wait()
		close(n.cabindDone)
	}()
	if err := waitSocket(ctx, sock); err != nil {
		return err
	}
	if n.cc, err = client.Dial(sock); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := concierge.NewVmConciergeClient(n.cc).ListVms(wctx, &concierge.ListVmsRequest{}, grpc.WaitForReady(true)); err != nil {
		return fmt.Errorf("cabind does not answer: %w", err)
	}
	return nil
}

// startGuest boots the VM, serves cabin-netperf on its address (launched
// by Maitred, so it outlives the exec that copied it in), and forwards
// the tap namespace's loopback port to it.
func (n *netEnv) startGuest(ctx context.Context) error {
	if _, err := startThroughDaemon(ctx, n.cc, netVM); err != nil {
		return err
	}
	info, err := concierge.NewVmConciergeClient(n.cc).GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: netVM})
	if err != nil {
		return err
	}
	if !info.GetSuccess() || info.GetVmInfo().GetIpv4Address() == 0 {
		return fmt.Errorf("GetVmInfo shows no address: %v", info)
	}
	// ipv4_address is in network byte order, read as a little-endian
	// integer (semantics.md).
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], info.GetVmInfo().GetIpv4Address())
	n.guest = netip.AddrFrom4(b)

	prog, err := os.ReadFile(n.netperf)
	if err != nil {
		return err
	}
	// Positional parameters, not text in the script: nothing is quoted.
	if _, err := execIO(ctx, n.cc, netVM, prog, "sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1" && chmod 755 "$1"`, "sh", guestNetperf); err != nil {
		return fmt.Errorf("copy cabin-netperf in: %w", err)
	}
	// The server waits for the guest's address, which Maitred's
	// ConfigureNetwork may still be setting.
	resp, err := vmtools.NewMaitredClient(n.cc).LaunchProcess(toVM(ctx, netVM), &vmtools.LaunchProcessRequest{
		Argv: []string{guestNetperf, "serve", "-addr", n.direct().addr, "-for", readyWait.String()}})
	if err != nil {
		return err
	}
	if resp.GetStatus() != vmtools.ProcessStatus_LAUNCHED {
		return fmt.Errorf("launch cabin-netperf: %v", resp.GetStatus())
	}
	if _, err := n.run(ctx, n.direct(), "wait", "-for", readyWait.String()); err != nil {
		return err
	}
	if _, err := cabinv1.NewForwardsClient(n.cc).AddForward(ctx, &cabinv1.AddForwardRequest{
		VmName: netVM, Forward: &cabinv1.Forward{HostPort: forwardPort, GuestPort: perfPort}}); err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	_, err = n.run(ctx, n.forward(), "wait", "-for", readyWait.String())
	return err
}

// run runs a cabin-netperf client on p and returns what it prints.
func (n *netEnv) run(ctx context.Context, p route, mode string, args ...string) ([]byte, error) {
	cmd := p.ns.command(ctx, append([]string{n.netperf, mode, "-addr", p.addr}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("cabin-netperf %s to %s (%s): %w: %s", mode, p.addr, p.name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// stopCabind stops every VM of the cabind at cc, then the cabind that
// cmd runs (done closes when it has exited); it says what it had to force.
// cc and done may be nil, for a cabind that did not get that far.
func stopCabind(cc *grpc.ClientConn, cmd *exec.Cmd, done chan struct{}) []error {
	var errs []error
	if cc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := concierge.NewVmConciergeClient(cc).StopAllVms(ctx, nil); err != nil {
			errs = append(errs, fmt.Errorf("stop the VMs: %w", err))
		}
		cancel()
		cc.Close()
	}
	if done != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			errs = append(errs, errors.New("cabind did not exit within 15 s of SIGTERM; killed it"))
			cmd.Process.Kill()
			<-done
		}
	}
	return errs
}

// close stops the VM and its cabind, the servers, and deletes the
// namespaces, killing what is left in them; it says what it had to force.
func (n *netEnv) close() {
	errs := stopCabind(n.cc, n.cabind, n.cabindDone)
	for _, s := range n.servers {
		s.Process.Kill()
		s.Wait()
	}
	for _, ns := range n.made {
		if err := ns.delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		progress("net: cleaning up: %v", err)
	}
}

// transferRate parses a send or recv client's figures, in bytes a second.
func transferRate(out []byte) (float64, error) {
	var t struct {
		Bytes int64 `json:"bytes"`
		NS    int64 `json:"ns"`
	}
	if err := json.Unmarshal(out, &t); err != nil {
		return 0, err
	}
	if t.NS <= 0 || t.Bytes <= 0 {
		return 0, fmt.Errorf("no transfer: %s", out)
	}
	return float64(t.Bytes) / (float64(t.NS) / 1e9), nil
}

// setupTimes parses a connect client's figures.
func setupTimes(out []byte) ([]time.Duration, error) {
	var s struct {
		NS []int64 `json:"ns"`
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, err
	}
	ds := make([]time.Duration, len(s.NS))
	for i, ns := range s.NS {
		ds[i] = time.Duration(ns)
	}
	return ds, nil
}
