package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
)

// Test users: uids no account on the host has.
const (
	aliceUID = 47101
	bobUID   = 47102
	eveUID   = 47103 // not in the socket's group
)

// cabinAs runs the cabin CLI as uid, in the socket's group when inGroup,
// with the kernel's word on who it is (SO_PEERCRED) the only identity
// cabind goes by.
func cabinAs(t *testing.T, e *env, uid int, gid uint32, inGroup bool, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(testContext(t, 90*time.Second), filepath.Join(e.bin, "cabin"), args...)
	cmd.Env = []string{"CABIN_SOCKET=" + e.socket, "PATH=/usr/bin:/bin", "HOME=/"}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	if inGroup {
		cred.Groups = []uint32{gid}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("cabin %q as uid %d: %v", args, uid, err)
	}
	return res
}

// TestCallersApart: two users of the socket's group and root share one
// cabind; each user's VMs are its own, by the kernel's word on the caller,
// through every verb, the relay included; a user outside the group cannot
// connect at all.
func TestCallersApart(t *testing.T) {
	e := needEnv(t)
	group, err := user.LookupGroup("cabin")
	if err != nil {
		t.Skipf("no cabin group (scripts/setup.sh creates it): %v", err)
	}
	gid64, _ := strconv.ParseUint(group.Gid, 10, 32)
	gid := uint32(gid64)
	var st syscall.Stat_t
	if err := syscall.Stat(e.socket, &st); err != nil || st.Gid != gid || st.Mode&0o777 != 0o660 {
		t.Fatalf("socket gid %d mode %o (%v), want the cabin group's %d, 0660", st.Gid, st.Mode&0o777, err, gid)
	}
	// Let the test users reach the socket and the CLI: the run's
	// directory is root's own (0700) otherwise.
	if err := os.Chmod(e.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(e.dir, 0o700) })
	alice := func(args ...string) cliResult { return cabinAs(t, e, aliceUID, gid, true, args...) }
	bob := func(args ...string) cliResult { return cabinAs(t, e, bobUID, gid, true, args...) }
	alices := caller.UserOwner(aliceUID)

	const vm = "cit-alice"
	if res := alice("vm", "start", vm, "--memory", "256"); res.code != 0 {
		t.Fatalf("alice starts %s: %v", vm, res)
	}
	t.Cleanup(func() {
		if res := cabinCLI(t, e, "--owner", alices, "vm", "stop", vm); res.code != 0 {
			t.Errorf("cleanup: stop %s: %v", vm, res)
		}
	})

	if res := alice("vm", "exec", vm, "--", "echo", "mine"); res.code != 0 || strings.TrimSpace(res.stdout) != "mine" {
		t.Errorf("alice execs in her VM: %v", res)
	}
	if res := alice("vm", "list"); res.code != 0 || !strings.Contains(res.stdout, vm) || strings.Contains(res.stdout, e.shared.name) {
		t.Errorf("alice lists: %v; want her VM and not root's", res)
	}
	if res := bob("vm", "list"); res.code != 0 || strings.Contains(res.stdout, vm) {
		t.Errorf("bob lists: %v; want nothing of alice's", res)
	}
	// Naming alice as the owner, bob is refused, whatever the verb.
	for _, args := range [][]string{
		{"vm", "info", vm}, {"vm", "stop", vm}, {"vm", "logs", vm}, {"vm", "exec", vm, "--", "true"}, {"run", vm, "--", "true"},
		{"vm", "start", "cit-bob-as-alice"},
	} {
		res := bob(append([]string{"--owner", alices}, args...)...)
		if res.code == 0 || !strings.Contains(strings.ToLower(res.stderr), "permission") {
			t.Errorf("bob %q as alice: %v; want refused, saying so", args, res)
		}
	}
	// Without naming her, he finds no VM of that name: his are his own.
	if res := bob("vm", "exec", vm, "--", "true"); res.code == 0 || !strings.Contains(res.stderr, "no VM named "+vm) {
		t.Errorf("bob execs in %s: %v; want not found", vm, res)
	}
	if res := bob("vm", "stop", vm); res.code == 0 || !strings.Contains(res.stderr, "no VM named") {
		t.Errorf("bob stops a VM he has not: %v; want told there is none", res)
	}
	if res := alice("vm", "exec", vm, "--", "true"); res.code != 0 {
		t.Errorf("alice's VM after bob's tries: %v", res)
	}
	// Root sees and may act on all.
	if res := cabinCLI(t, e, "--owner", alices, "vm", "exec", vm, "--", "echo", "root"); res.code != 0 {
		t.Errorf("root execs in alice's VM: %v", res)
	}
	// Not in the group, a user cannot connect at all.
	if res := cabinAs(t, e, eveUID, gid, false, "vm", "list"); res.code == 0 || !strings.Contains(strings.ToLower(res.stderr), "permission denied") {
		t.Errorf("a user outside the group lists: %v; want the socket refused", res)
	}
}
