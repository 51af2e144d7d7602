package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func TestUnreachableSocketHint(t *testing.T) {
	dir, err := os.MkdirTemp("", "c")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nobody.sock")
	for _, args := range [][]string{
		{"vm", "list"},
		{"vm", "start", "web"},
		{"exec", "web", "true"},
		{"events"},
	} {
		r := runCLI(t, nil, append([]string{"--socket", sock}, args...)...)
		want := "cabin: cannot reach cabind at " + sock + ": connect: no such file or directory (is cabind running?"
		if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("%q: got %+v, want stderr starting %q", args, r, want)
		}
	}
}

func TestDaemonUnavailableIsNotBlamedOnTheSocket(t *testing.T) {
	d := startDaemon(t)
	d.vms.logs = func(*cabinv1.LogsRequest, cabinv1.Vms_LogsServer) error {
		return status.Error(codes.Unavailable, "the agent of web does not answer")
	}
	r := d.run(t, nil, "vm", "logs", "web")
	if r.code != 1 || r.stderr != "cabin: logs of web: the agent of web does not answer\n" {
		t.Errorf("got %+v", r)
	}
}

func TestSocketFromEnvironment(t *testing.T) {
	d := startDaemon(t)
	d.vms.listVMs = func(*cabinv1.ListVmsRequest) (*cabinv1.ListVmsResponse, error) {
		return &cabinv1.ListVmsResponse{}, nil
	}
	var stdout, stderr syncBuffer
	env := func(k string) string {
		if k == socketEnv {
			return d.socket
		}
		return ""
	}
	if code := run(t.Context(), []string{"vm", "list"}, strings.NewReader(""), &stdout, &stderr, env); code != 0 {
		t.Errorf("exit code %d with $%s set; stderr:\n%s", code, socketEnv, stderr.String())
	}
}

func TestUsageErrors(t *testing.T) {
	d := startDaemon(t)
	for _, tc := range []struct {
		args    []string
		message string
	}{
		{[]string{"xyzzyq"}, `cabin: unknown command "xyzzyq" for "cabin"`},
		{[]string{"vm", "strat", "web"}, `cabin: unknown command "strat" for "cabin vm"; did you mean start?`},
		{[]string{"--nope", "vm", "list"}, "cabin: unknown flag: --nope"},
		{[]string{"vm", "list", "extra"}, `cabin: vm list takes no arguments, got "extra"`},
		{[]string{"vm", "info"}, "cabin: vm info needs a VM name"},
		{[]string{"exec"}, "cabin: exec needs a container and a command"},
		{[]string{"vm", "exec"}, "cabin: vm exec needs a VM name and a command"},
		{[]string{"exec", "web", "--"}, "cabin: exec needs a command to run in web"},
		{[]string{"--socket", "", "vm", "list"}, "cabin: --socket must not be empty"},
	} {
		r := d.run(t, nil, tc.args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, tc.message+"\n") || !strings.Contains(r.stderr, "--help' for usage.") {
			t.Errorf("%q: got %+v, want exit 2 and %q", tc.args, r, tc.message)
		}
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{}, {"--help"}, {"vm"}, {"exec", "--help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%q: got %+v", args, r)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	st := status.Error(codes.InvalidArgument, "cpus: must be at most 8")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{st, "cpus: must be at most 8"},
		{fmt.Errorf("start web: %w", st), "start web: cpus: must be at most 8"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", st)), "a: b: cpus: must be at most 8"},
		{fmt.Errorf("x: %w", status.Error(codes.NotFound, "")), "x: NotFound"},
		{errors.New("plain"), "plain"},
	} {
		if got := errorMessage(tc.err); got != tc.want {
			t.Errorf("errorMessage(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestReportExitCodes(t *testing.T) {
	var b strings.Builder
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("boom"), 1},
		{usagef("bad"), 2},
		{fmt.Errorf("wrapped: %w", usagef("bad")), 2},
		{&remoteExitError{code: 42}, 42},
		{status.Error(codes.Internal, "x"), 1},
	} {
		if got := report(&b, nil, tc.err, ""); got != tc.want {
			t.Errorf("report(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestReportBrokenPipeIsSilent(t *testing.T) {
	var b strings.Builder
	err := fmt.Errorf("write standard output: %w", &os.PathError{Op: "write", Path: "/dev/stdout", Err: syscall.EPIPE})
	if got := report(&b, nil, err, ""); got != 141 || b.String() != "" {
		t.Errorf("report(%v) = %d and printed %q, want 141 and nothing, as for a process killed by SIGPIPE", err, got, b.String())
	}
}
