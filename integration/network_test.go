package integration

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/statedir"
)

// TestNetworkTap runs a cabind of its own in a network namespace the test
// makes, so that its taps, its nftables table and its forwarding are
// never the host's, and starts a VM there through VmConcierge/StartVm, as
// a client built from the seed protos would: the VM's address shows in
// GetVmInfo, its tap holds the gateway, and its guest fetches a file over
// HTTP from a server bound on that gateway address. Stopped, the VM's tap
// is gone.
func TestNetworkTap(t *testing.T) {
	e := needEnv(t)
	for _, p := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s (iproute2, util-linux): %v", p, err)
		}
	}
	ns := fmt.Sprintf("cit-net-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("delete the network namespace %s: %v: %s", ns, err, out)
		}
	})
	nsPath := filepath.Join("/run/netns", ns)
	inNS := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := inNS("link", "set", "lo", "up"); err != nil {
		t.Fatalf("loopback up in %s: %v: %s", ns, err, out)
	}

	dir, err := os.MkdirTemp("", "cnt")
	if err != nil {
		t.Fatal(err)
	}
	reapAfter(dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &env{
		dir: dir, bin: e.bin,
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "cabind.sock"),
		logPath:  filepath.Join(dir, "cabind.log"),
		wrap:     []string{"nsenter", "--net=" + nsPath, "--"},
		net:      "tap",
	}
	// The guest image as the shared cabind built it: there is nothing to
	// download it with in the namespace.
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(e.stateDir, "image"), c.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the guest image: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := c.startDaemon(ctx); err != nil {
		log, _ := os.ReadFile(c.logPath)
		t.Fatalf("start cabind in %s: %v\n%s", ns, err, log)
	}
	t.Cleanup(func() {
		if c.daemonRunning() {
			if err := c.stopDaemon(); err != nil {
				t.Errorf("stop the namespace's cabind: %v", err)
			}
		}
		if left := killQEMUs(c.stateDir); len(left) > 0 {
			t.Errorf("QEMU processes %v of the namespace's cabind were left running; killed them", left)
		}
		c.cc.Close()
		if t.Failed() {
			log, _ := os.ReadFile(c.logPath)
			t.Logf("the namespace's cabind's log:\n%s", log)
		}
	})

	const name = "cit-net"
	if _, err := bootVM(ctx, c.cc, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.daemonRunning() && listed(t, c, name) {
			stopVM(t, c, name)
		}
	})
	info := vmInfo(t, c, name)
	raw := info.GetVmInfo().GetIpv4Address()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], raw)
	addr, gateway := netip.AddrFrom4(b), netip.MustParseAddr("100.115.92.25")
	if addr != netip.MustParseAddr("100.115.92.26") {
		t.Fatalf("GetVmInfo: ipv4_address %#x (%s), want 100.115.92.26, the first VM's of the default pool", raw, addr)
	}
	tap := "cbn" + statedir.VMID("", name)[:12]
	if out, err := inNS("-4", "-o", "addr", "show", "dev", tap); err != nil || !strings.Contains(out, gateway.String()+"/30") {
		t.Errorf("tap %s in the namespace: %v: %q; want it holding %s/30", tap, err, out, gateway)
	}
	if _, err := net.InterfaceByName(tap); err == nil {
		t.Errorf("tap %s is on the host", tap)
	}

	// The guest half: ConfigureNetwork at bring-up gives eth0 its address.
	var eth0 string
	for deadline := time.Now().Add(10 * time.Second); ; {
		res, err := execArgs(testContext(t, 30*time.Second), c.cc, name, "ip", "-4", "addr", "show", "dev", "eth0")
		if err == nil && res.code == 0 && strings.Contains(string(res.stdout), addr.String()+"/30") {
			break
		}
		eth0 = fmt.Sprintf("%v, %s%s", err, res.stdout, res.stderr)
		if time.Now().After(deadline) {
			t.Skipf("the guest's eth0 has no %s/30 10 s after boot, though GetVmInfo shows it: the guest cannot configure its network yet (Maitred ConfigureNetwork): %s", addr, eth0)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// A file served on the tap's gateway address, in the namespace.
	lis := listenIn(t, nsPath, net.JoinHostPort(gateway.String(), "0"))
	content := make([]byte, 32)
	rand.Read(content)
	want := hex.EncodeToString(content)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/file" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(want))
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	port := lis.Addr().(*net.TCPAddr).Port
	url := "http://" + net.JoinHostPort(gateway.String(), strconv.Itoa(port)) + "/file"
	if got := mustExec(t, c, name, "wget", "-q", "-O", "-", url); got != want {
		t.Errorf("the guest fetched %q from %s, want %q", got, url, want)
	}

	// The host reaches the guest: at its address, and through a forward
	// of a port on the namespace's loopback, which goes over the tap.
	resp, err := vmtools.NewMaitredClient(c.cc).LaunchProcess(toVM(testContext(t, 30*time.Second), name),
		&vmtools.LaunchProcessRequest{Argv: []string{"nc", "-ll", "-p", "8000", "-e", "hostname"}})
	if err != nil || resp.GetStatus() != vmtools.ProcessStatus_LAUNCHED {
		t.Fatalf("launch a server in the guest: %v, %v", resp, err)
	}
	direct := net.JoinHostPort(addr.String(), "8000")
	var reply string
	for deadline := time.Now().Add(10 * time.Second); reply != name+"\n" && time.Now().Before(deadline); {
		reply = readIn(t, nsPath, direct)
		time.Sleep(100 * time.Millisecond)
	}
	if reply != name+"\n" {
		t.Errorf("a host client of %s in the namespace read %q, want the guest's hostname", direct, reply)
	}
	fwd, err := cabinv1.NewForwardsClient(c.cc).AddForward(testContext(t, 10*time.Second), &cabinv1.AddForwardRequest{
		VmName: name, Forward: &cabinv1.Forward{HostPort: 18000, GuestPort: 8000}})
	if err != nil {
		t.Fatalf("add a forward: %v", err)
	}
	if got := readIn(t, nsPath, net.JoinHostPort(fwd.GetHostAddress(), "18000")); got != name+"\n" {
		t.Errorf("a host client of the forward read %q, want the guest's hostname", got)
	}

	stopVM(t, c, name)
	if out, err := inNS("link", "show", "dev", tap); err == nil {
		t.Errorf("tap %s still there after the VM stopped:\n%s", tap, out)
	}
}

// inNamespace runs f on a thread in the network namespace at nsPath: the
// sockets f makes stay there, whichever thread uses them later. The thread
// goes back to where it was, or, failing that, dies with its goroutine.
func inNamespace(nsPath string, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer self.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter %s: %w", nsPath, err)
			return
		}
		err = f()
		if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); serr != nil {
			// The thread stays locked and exits with the goroutine.
			done <- errors.Join(err, fmt.Errorf("leave %s: %w", nsPath, serr))
			return
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}

// listenIn listens on addr (TCP) in the network namespace at nsPath.
func listenIn(t *testing.T, nsPath, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := inNamespace(nsPath, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		if l != nil {
			l.Close()
		}
		t.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	return l
}

// readIn connects to addr (TCP) from the network namespace at nsPath and
// reads until the server closes; "" when it cannot connect.
func readIn(t *testing.T, nsPath, addr string) string {
	t.Helper()
	var conn net.Conn
	err := inNamespace(nsPath, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Logf("connect to %s in %s: %v", addr, nsPath, err)
		return ""
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Logf("read %s in %s: %v", addr, nsPath, err)
	}
	return string(b)
}
