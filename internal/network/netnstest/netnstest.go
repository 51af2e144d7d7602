// Package netnstest runs a test in a network namespace of its own, so that
// the interfaces, routes, nftables tables and sysctls it makes or changes
// are never the host's: the test runs again, alone, in a child process
// cloned into a new network namespace, and with it everything it starts
// (QEMU included). The namespace goes when the child exits.
package netnstest

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// envVar names, in the child, the test it runs in its namespace.
const envVar = "CABIN_NETNS_TEST"

// Enter reports whether the calling test runs in a network namespace of
// its own, with its loopback up; then it goes on. Otherwise Enter runs the
// test in a child process in a new namespace, reports the child's outcome
// (its failure, or its skip) as the test's, and returns false: the test
// returns at once.
//
//	func TestTap(t *testing.T) {
//		if !netnstest.Enter(t) {
//			return
//		}
//		...
//	}
//
// Without root, the test is skipped.
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envVar) == t.Name() {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("bring the namespace's loopback up: %v", err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to make a network namespace of its own")
	}
	args := []string{"-test.run", runPattern(t.Name()), "-test.count=1", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envVar+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	switch {
	case err != nil:
		t.Fatalf("in a network namespace of its own: %v\n%s", err, out.Bytes())
	case bytes.Contains(out.Bytes(), []byte("--- SKIP: "+t.Name())):
		t.Skipf("in a network namespace of its own:\n%s", out.Bytes())
	case !bytes.Contains(out.Bytes(), []byte("--- PASS: "+t.Name())):
		t.Fatalf("in a network namespace of its own, the test did not run:\n%s", out.Bytes())
	default:
		if testing.Verbose() {
			t.Logf("in a network namespace of its own:\n%s", out.Bytes())
		}
	}
	return false
}

// runPattern is the -test.run pattern that matches the test name and
// nothing else: each level of a subtest's name anchored and quoted.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
