package main

import (
	"maps"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

func TestExecProcessFlags(t *testing.T) {
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
	r := d.run(t, nil, "vm", "exec", "-e", "A=1", "-e", "B=x=y", "--env", "EMPTY=", "-e", "UNSET", "-w", "/tmp", "-u", "1000:1000", "web", "env")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := &execv1.ExecStart{Argv: []string{"env"}, Env: map[string]string{"A": "1", "B": "x=y", "EMPTY": ""}, Cwd: "/tmp", User: "1000:1000"}
	if c := <-calls; !proto.Equal(c.start, want) {
		t.Errorf("start = %v, want %v", c.start, want)
	}
}

func TestProcessFlagsEnviron(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"TERM": "screen-256color", "HOME": "/home/me"}[k] }
	p := processFlags{env: []string{"HOME", "X=1", "NOPE"}}
	got, err := p.environ(getenv, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"TERM": "screen-256color", "HOME": "/home/me", "X": "1"}; !maps.Equal(got, want) {
		t.Errorf("environ = %v, want %v", got, want)
	}
	// Without a terminal, no TERM; -e TERM=... wins with one.
	if got, _ := (&processFlags{}).environ(getenv, false); len(got) != 0 {
		t.Errorf("no tty: %v", got)
	}
	if got, _ := (&processFlags{env: []string{"TERM=dumb"}}).environ(getenv, true); got["TERM"] != "dumb" {
		t.Errorf("-e TERM=dumb: %v", got)
	}
}

func TestExecBadProcessFlags(t *testing.T) {
	d := startDaemon(t)
	d.exec.handle = func(stream execv1.Exec_ExecServer) error {
		t.Error("a bad flag reached the daemon")
		return sendExit(stream, 0)
	}
	for _, args := range [][]string{
		{"-e", "=x"},
		{"-w", "relative/dir"},
		{"-u", "a:b:c"},
		{"-u", "../root"},
	} {
		r := d.run(t, nil, append(append([]string{"vm", "exec"}, args...), "web", "true")...)
		if r.code != 2 || !strings.Contains(r.stderr, args[0]) {
			t.Errorf("exec %q: exit %d, %q; want 2 naming %s", args, r.code, r.stderr, args[0])
		}
	}
}

// TestExecStartFailedExitCodes: a command the guest cannot start exits
// 127 or 126 as in a shell, with the guest's reason; other errors exit 1.
func TestExecStartFailedExitCodes(t *testing.T) {
	d := startDaemon(t)
	for _, tt := range []struct {
		trailer string
		err     error
		code    int
	}{
		{"127", status.Error(codes.NotFound, `start nosuchcmd: executable file not found in $PATH`), 127},
		{"126", status.Error(codes.FailedPrecondition, `start /etc/hosts: permission denied`), 126},
		{"", status.Error(codes.NotFound, `no VM named web`), 1},
		{"99", status.Error(codes.NotFound, `start x: odd trailer`), 1},
	} {
		d.exec.handle = func(stream execv1.Exec_ExecServer) error {
			if _, err := recvStart(stream); err != nil {
				return err
			}
			if tt.trailer != "" {
				stream.SetTrailer(metadata.Pairs(execv1.StartFailedTrailer, tt.trailer))
			}
			return tt.err
		}
		r := d.run(t, nil, "vm", "exec", "web", "nosuchcmd")
		msg := status.Convert(tt.err).Message()
		if r.code != tt.code || !strings.Contains(r.stderr, msg) || strings.Contains(r.stderr, "rpc error") {
			t.Errorf("trailer %q: exit %d, stderr %q; want %d and %q", tt.trailer, r.code, r.stderr, tt.code, msg)
		}
	}
}
