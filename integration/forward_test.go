package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/api/vmtools"
	"github.com/cabinvm/cabin/internal/statedir"
)

// udpEcho is a guest program answering each datagram to the port its
// argument names with the address it came from and the datagram: busybox's
// nc has no UDP.
const udpEcho = `package main

import (
	"net"
	"os"
)

func main() {
	pc, err := net.ListenPacket("udp", ":"+os.Args[1])
	if err != nil {
		os.Exit(1)
	}
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			os.Exit(1)
		}
		pc.WriteTo(append([]byte(from.String()+" "), buf[:n]...), from)
	}
}
`

// TestForward forwards host ports to servers in a VM on QEMU's user-mode
// network, which the host cannot reach at the guest's address, so the
// forwards go over the VM's channel: a host client reaches them on
// 127.0.0.1. The bad forwards of issue 13 are refused through the CLI.
// The forwards outlive cabind killed with SIGKILL, and end with the VM
// when its QEMU is killed.
func TestForward(t *testing.T) {
	e := needEnv(t)
	const name = "cit-fwd"
	t.Cleanup(func() {
		if listed(t, e, name) {
			stopVM(t, e, name)
		}
	})
	if res := cabinCLI(t, e, "vm", "start", name, "--cpus", "1", "--net", "user"); res.code != 0 {
		t.Fatalf("cabin vm start --net user: %v", res)
	}

	// Servers in the guest, which Maitred keeps apart from any exec:
	// cabind's restart below ends the execs in flight.
	guestProgram := filepath.Join(t.TempDir(), "udpecho")
	buildGuestProgram(t, udpEcho, guestProgram)
	copyToVM(t, e, name, guestProgram, "/tmp/udpecho")
	for _, argv := range [][]string{
		{"nc", "-ll", "-p", "8000", "-e", "cat"},
		{"nc", "-ll", "-p", "8001", "-e", "hostname"},
		{"/tmp/udpecho", "5353"},
	} {
		resp, err := vmtools.NewMaitredClient(e.cc).LaunchProcess(toVM(testContext(t, 30*time.Second), name),
			&vmtools.LaunchProcessRequest{Argv: argv})
		if err != nil || resp.GetStatus() != vmtools.ProcessStatus_LAUNCHED {
			t.Fatalf("launch %q in the guest: %v, %v", argv, resp, err)
		}
	}

	echoPort, helloPort, udpPort := freeHostPort(t, "tcp"), freeHostPort(t, "tcp"), freeHostPort(t, "udp")
	for _, args := range [][]string{
		{fmt.Sprintf("%d:8000", echoPort)},
		{fmt.Sprintf("%d:8001", helloPort), "--address", "127.0.0.1"},
		{fmt.Sprintf("%d:5353", udpPort), "--udp"},
	} {
		res := cabinCLI(t, e, append([]string{"vm", "forward", name}, args...)...)
		if res.code != 0 || !strings.HasPrefix(res.stdout, "forwarding ") {
			t.Fatalf("cabin vm forward %s %q: %v", name, args, res)
		}
	}
	res := cabinCLI(t, e, "vm", "forward", name, "--list")
	for _, want := range []string{
		fmt.Sprintf("tcp       127.0.0.1:%d", echoPort),
		fmt.Sprintf("udp       127.0.0.1:%d", udpPort),
	} {
		if res.code != 0 || !strings.Contains(res.stdout, want) {
			t.Errorf("cabin vm forward --list: %v; want a row %q", res, want)
		}
	}

	carries := func(t *testing.T) {
		t.Helper()
		tcpEcho(t, echoPort, strings.Repeat("through the channel\n", 5000))
		if got := tcpRead(t, helloPort); got != name+"\n" {
			t.Errorf("the guest's hello server said %q, want its host name", got)
		}
		udpAsk(t, udpPort)
	}
	t.Run("carries", carries)

	t.Run("bad forwards", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		takenPort := taken.Addr().(*net.TCPAddr).Port
		for _, c := range []struct {
			args []string
			says string
		}{
			{[]string{name, "0:8000"}, "host_port"},
			{[]string{name, "65536:8000"}, "host_port"},
			{[]string{name, "18001:0"}, "guest_port"},
			{[]string{name, fmt.Sprintf("%d:8000", takenPort)}, fmt.Sprintf("host port %d is in use", takenPort)},
			{[]string{name, fmt.Sprintf("%d:8000", echoPort)}, "already forwards"},
			{[]string{"cit-no-such-vm", "18001:8000"}, "no VM named cit-no-such-vm"},
			{[]string{name, "--rm", "1"}, "no forward"},
		} {
			res := cabinCLI(t, e, append([]string{"vm", "forward"}, c.args...)...)
			if res.code != 1 || !strings.Contains(res.stderr, c.says) {
				t.Errorf("cabin vm forward %q: %v; want a failure saying %q", c.args, res, c.says)
			}
		}
	})

	t.Run("cabind killed and restarted", func(t *testing.T) {
		e.crashDaemon(t)
		// The forwards listen again once the VM is taken back.
		waitUntil(t, 15*time.Second, "the echo forward to listen again", func() bool {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", echoPort))
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		carries(t)
	})

	t.Run("end with the VM", func(t *testing.T) {
		info := vmInfo(t, e, name)
		pid := int(info.GetVmInfo().GetPid())
		if !info.GetSuccess() || pid == 0 {
			t.Fatalf("GetVmInfo %s: %v", name, info)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill the VM's QEMU: %v", err)
		}
		waitUntil(t, 15*time.Second, "the forwards' ports to be free", func() bool {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", echoPort))
			if err != nil {
				return false
			}
			ln.Close()
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
			if err != nil {
				return false
			}
			pc.Close()
			return true
		})
		file := filepath.Join(e.stateDir, "vms", statedir.VMID("", name), "forwards.json")
		waitUntil(t, 5*time.Second, "the forwards file to be removed", func() bool {
			_, err := os.Stat(file)
			return errors.Is(err, os.ErrNotExist)
		})
		if res := cabinCLI(t, e, "vm", "forward", name, "--list"); res.code != 1 || !(strings.Contains(res.stderr, "no VM named "+name) || strings.Contains(res.stderr, "has stopped")) {
			t.Errorf("cabin vm forward --list of a VM whose QEMU was killed: %v", res)
		}
	})
}

// buildGuestProgram builds the Go program src, static, as dst.
func buildGuestProgram(t *testing.T, src, dst string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(testContext(t, 2*time.Minute), "go", "build", "-trimpath", "-o", dst, "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a guest program: %v\n%s", err, out)
	}
}

// freeHostPort is a port of 127.0.0.1 nothing listens on now.
func freeHostPort(t *testing.T, proto string) int {
	t.Helper()
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitUntil polls ok until it holds, failing t after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpEcho sends msg to the echo server behind port, half-closes, and
// wants it all back, then the server's end. The server in the guest may
// not listen yet: a connection it refuses is reset, and tried again.
func tcpEcho(t *testing.T, port int, msg string) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			last = err
			continue
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() {
			c.Write([]byte(msg))
			c.(*net.TCPConn).CloseWrite()
		}()
		back, err := io.ReadAll(c)
		c.Close()
		if err == nil && len(back) == 0 {
			last = errors.New("nothing came back")
			continue
		}
		if err != nil || string(back) != msg {
			last = fmt.Errorf("%d bytes back of %d: %v", len(back), len(msg), err)
			continue
		}
		return
	}
	t.Fatalf("echo through the forward of port %d: %v", port, last)
}

// tcpRead reads what the server behind port says before it closes.
func tcpRead(t *testing.T, port int) string {
	t.Helper()
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			last = err
			continue
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err == nil && len(b) > 0 {
			return string(b)
		}
		last = fmt.Errorf("read %q: %v", b, err)
	}
	t.Fatalf("read through the forward of port %d: %v", port, last)
	return ""
}

// udpAsk sends datagrams from two clients to the UDP echo behind port: each
// gets its own answers, and the guest sees them as two clients.
func udpAsk(t *testing.T, port int) {
	t.Helper()
	ask := func(c net.Conn, msg string) string {
		t.Helper()
		buf := make([]byte, 65535)
		for range 75 {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				continue
			}
			from, got, _ := strings.Cut(string(buf[:n]), " ")
			if got != msg {
				t.Fatalf("the guest answered %q to %q", got, msg)
			}
			return from
		}
		t.Fatalf("no answer to %q through the udp forward of port %d", msg, port)
		return ""
	}
	var froms []string
	for i := range 2 {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		froms = append(froms, ask(c, fmt.Sprintf("client %d", i)))
		if again := ask(c, strings.Repeat("x", 30000)); again != froms[i] {
			t.Errorf("client %d's datagrams reached the guest from %s and %s: want one flow", i, froms[i], again)
		}
	}
	if froms[0] == froms[1] {
		t.Errorf("two clients reached the guest from one address, %s", froms[0])
	}
}
