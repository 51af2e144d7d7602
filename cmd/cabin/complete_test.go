package main

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func TestFirstArg(t *testing.T) {
	for use, want := range map[string]string{
		"exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] NAME [--] CMD [ARGS...]": "NAME",
		"info NAME [--json]": "NAME",
		"run [-i] [-u UID[:GID]] [--rootfs NAME] VM [--] CMD": "VM",
		"list [--json]":           "",
		"start NAME":              "NAME",
		"create NAME --size SIZE": "NAME",
	} {
		if got := firstArg(use); got != want {
			t.Errorf("firstArg(%q) = %q, want %q", use, got, want)
		}
	}
}

// complete asks cabin's completion, as a shell's script does, and returns
// the candidates and the directive line.
func complete(t *testing.T, d *fakeDaemon, args ...string) ([]string, string) {
	t.Helper()
	r := d.run(t, nil, append([]string{"__complete"}, args...)...)
	if r.code != 0 {
		t.Fatalf("__complete %q: %+v", args, r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

func TestCompletion(t *testing.T) {
	d := startDaemon(t)
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return &cabinv1.ListVmsResponse{Vms: []*cabinv1.Vm{{Name: "db"}, {Name: "web"}, {Name: "worker"}}}, nil
	}
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"vm", "exec", "w"}, []string{"web", "worker"}},
		{[]string{"vm", "stop", ""}, []string{"db", "web", "worker"}},
		{[]string{"shell", "d"}, []string{"db"}},
		// After the VM: the command runs in the guest, so no local files.
		{[]string{"vm", "exec", "web", ""}, nil},
		{[]string{"vm", "start", "--net", ""}, []string{"tap", "user", "none"}},
		{[]string{"vm", "start", "--accel", ""}, []string{"auto", "kvm", "tcg"}},
	} {
		got, directive := complete(t, d, tt.args...)
		if !slices.Equal(got, tt.want) || directive != ":4" {
			t.Errorf("complete %q = %q %s, want %q and :4 (no file names)", tt.args, got, directive, tt.want)
		}
	}
}

func TestShell(t *testing.T) {
	d := startDaemon(t)
	calls := make(chan *execCall, 1)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		c, err := recvStart(stream)
		if err != nil {
			return err
		}
		calls <- c
		return sendExit(stream, 0)
	}
	if r := d.run(t, strings.NewReader("exit\n"), "shell", "-u", "1000", "web"); r.code != 0 {
		t.Fatalf("shell: %+v", r)
	}
	// Standard input is not a terminal here: no -t, input passed through.
	want := &execv1.ExecStart{Argv: []string{"/bin/sh", "-l"}, Stdin: true, User: "1000"}
	if c := <-calls; !proto.Equal(c.start, want) {
		t.Errorf("start = %v, want %v", c.start, want)
	}
	if r := d.run(t, nil, "shell"); r.code != 2 {
		t.Errorf("shell without a VM: %+v", r)
	}
}
