package execsvc

import (
	"context"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

// startFailure starts st and returns the call's error and the trailer
// that says what a shell would have exited with.
func startFailure(t *testing.T, c execv1.ExecClient, st *execv1.ExecStart) (error, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(startReq(st))
	stream.CloseSend()
	_, err = collect(t, stream, false)
	code := ""
	if v := stream.Trailer().Get(execv1.StartFailedTrailer); len(v) == 1 {
		code = v[0]
	}
	return err, code
}

func TestStartFailedCodes(t *testing.T) {
	c := newClient(t)
	file, err := os.CreateTemp("", "x")
	if err != nil {
		t.Fatal(err)
	}
	file.Close()
	defer os.Remove(file.Name())
	for _, tt := range []struct {
		name  string
		start *execv1.ExecStart
		code  codes.Code
		shell string
	}{
		{"not in PATH", &execv1.ExecStart{Argv: []string{"cabin-no-such-command"}}, codes.NotFound, "127"},
		{"missing path", &execv1.ExecStart{Argv: []string{"/nonexistent/x"}}, codes.NotFound, "127"},
		{"not executable", &execv1.ExecStart{Argv: []string{file.Name()}}, codes.FailedPrecondition, "126"},
		{"a directory", &execv1.ExecStart{Argv: []string{"/"}}, codes.FailedPrecondition, "126"},
		{"missing cwd", &execv1.ExecStart{Argv: []string{"true"}, Cwd: "/nonexistent"}, codes.NotFound, "126"},
		{"unknown user", &execv1.ExecStart{Argv: []string{"true"}, User: "cabin-no-such-user"}, codes.NotFound, "126"},
		{"unknown group", &execv1.ExecStart{Argv: []string{"true"}, User: "0:cabin-no-such-group"}, codes.NotFound, "126"},
		// The caller's mistakes are errors only: no shell exit code.
		{"bad user form", &execv1.ExecStart{Argv: []string{"true"}, User: "root:x:y"}, codes.InvalidArgument, ""},
		{"user with a slash", &execv1.ExecStart{Argv: []string{"true"}, User: "../root"}, codes.InvalidArgument, ""},
		{"uid -1", &execv1.ExecStart{Argv: []string{"true"}, User: "4294967295"}, codes.InvalidArgument, ""},
		{"empty argv", &execv1.ExecStart{}, codes.InvalidArgument, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err, shell := startFailure(t, c, tt.start)
			if status.Code(err) != tt.code || shell != tt.shell {
				t.Errorf("got %v with trailer %q, want %v and %q", err, shell, tt.code, tt.shell)
			}
		})
	}
}

func TestUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing user needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	c := newClient(t)
	id := []string{"sh", "-c", `echo "$(id -u) $(id -g) $(id -G) $HOME $USER"`}
	for _, tt := range []struct {
		user, want string
	}{
		{"nobody", nobody.Uid + " " + nobody.Gid + " " + nobody.Gid + " " + nobody.HomeDir + " nobody"},
		{nobody.Uid, nobody.Uid + " " + nobody.Gid + " " + nobody.Gid + " " + nobody.HomeDir + " nobody"},
		// A uid the guest does not list: gid 0, as docker, no HOME of its own.
		{"4242", "4242 0 0 " + os.Getenv("HOME") + " " + os.Getenv("USER")},
		{"4242:4343", "4242 4343 4343 " + os.Getenv("HOME") + " " + os.Getenv("USER")},
		{"nobody:0", nobody.Uid + " 0 0 " + nobody.HomeDir + " nobody"},
	} {
		t.Run(tt.user, func(t *testing.T) {
			res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: id, User: tt.user}))
			wantExit(t, res, 0, 0)
			if got := strings.TrimSpace(string(res.stdout)); got != strings.TrimSpace(tt.want) {
				t.Errorf("as %s: %q, want %q", tt.user, got, tt.want)
			}
		})
	}
	// The client's HOME wins over the user's.
	res := mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"sh", "-c", "echo $HOME"}, User: "nobody", Env: map[string]string{"HOME": "/tmp"}}))
	if got := strings.TrimSpace(string(res.stdout)); got != "/tmp" {
		t.Errorf("HOME = %q, want the client's /tmp", got)
	}
	// Not root: a root-only file stays closed.
	res = mustRun(t, c, startReq(&execv1.ExecStart{Argv: []string{"cat", "/proc/1/environ"}, User: "nobody"}))
	if res.exit.GetCode() == 0 {
		t.Error("nobody read /proc/1/environ")
	}
}
