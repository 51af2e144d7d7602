package integration

import (
	"bytes"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

// TestExec runs commands in the shared VM with cabin.v1.Exec through
// cabind's relay.
func TestExec(t *testing.T) {
	e := needEnv(t)
	run := func(t *testing.T, start *execv1.ExecStart, reqs ...*execv1.ExecRequest) execResult {
		t.Helper()
		res, err := execIn(testContext(t, 30*time.Second), e.cc, e.shared.name, start, reqs...)
		if err != nil {
			t.Fatalf("exec %q: %v", start.GetArgv(), err)
		}
		return res
	}

	t.Run("uname", func(t *testing.T) {
		res := run(t, &execv1.ExecStart{Argv: []string{"uname", "-a"}})
		out := string(res.stdout)
		if res.code != 0 || !strings.Contains(out, "Linux") || !strings.Contains(out, e.shared.name) {
			t.Errorf("uname -a: exit %d, output %q; want exit 0 and output naming Linux and host %s", res.code, out, e.shared.name)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		res := run(t, &execv1.ExecStart{Argv: []string{"sh", "-c", "exit 7"}})
		if res.code != 7 || res.signal != 0 {
			t.Errorf("sh -c 'exit 7': code %d signal %d, want code 7", res.code, res.signal)
		}
	})

	t.Run("killed by signal", func(t *testing.T) {
		res := run(t, &execv1.ExecStart{Argv: []string{"sh", "-c", "kill -9 $$"}})
		if res.signal != 9 || res.code != 128+9 {
			t.Errorf("sh killing itself: code %d signal %d, want code 137 signal 9", res.code, res.signal)
		}
	})

	t.Run("stdin round trip", func(t *testing.T) {
		// Larger than every flow-control window on the way, so the
		// agent's output buffers are reused many times over; and not text.
		in := make([]byte, 4<<20)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range in {
			in[i] = byte(r.UintN(256))
		}
		var reqs []*execv1.ExecRequest
		for chunk := range slices.Chunk(in, execv1.MaxChunk) {
			reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: chunk}})
		}
		reqs = append(reqs, &execv1.ExecRequest{Kind: &execv1.ExecRequest_CloseStdin{CloseStdin: &execv1.CloseStdin{}}})
		res := run(t, &execv1.ExecStart{Argv: []string{"cat"}, Stdin: true}, reqs...)
		if res.code != 0 {
			t.Errorf("cat: exit %d, stderr %q", res.code, res.stderr)
		}
		if !bytes.Equal(res.stdout, in) {
			t.Errorf("cat returned %d bytes that differ from the %d sent", len(res.stdout), len(in))
		}
	})

	t.Run("stderr separate", func(t *testing.T) {
		res := run(t, &execv1.ExecStart{Argv: []string{"sh", "-c", "echo to-out; echo to-err >&2"}})
		if string(res.stdout) != "to-out\n" || string(res.stderr) != "to-err\n" {
			t.Errorf("stdout %q stderr %q, want %q and %q", res.stdout, res.stderr, "to-out\n", "to-err\n")
		}
	})

	t.Run("tty", func(t *testing.T) {
		// As with docker exec -it: stdin attached, on the terminal.
		res := run(t, &execv1.ExecStart{Argv: []string{"tty"}, Tty: true, Stdin: true})
		if res.code != 0 || !regexp.MustCompile(`^/dev/pts/\d+\r?\n$`).Match(res.stdout) {
			t.Errorf("tty: exit %d, output %q; want /dev/pts/N", res.code, res.stdout)
		}
		if len(res.stderr) != 0 {
			t.Errorf("with a tty all output goes to stdout; got stderr %q", res.stderr)
		}
	})

	t.Run("tty without stdin", func(t *testing.T) {
		// As with docker's -t: the terminal is stdin too, with nothing
		// typed into it, so `cabin exec -t vm -- tty` works.
		res := run(t, &execv1.ExecStart{Argv: []string{"sh", "-c", "test -t 1 && test -t 0 && echo term"}, Tty: true})
		if res.code != 0 || string(res.stdout) != "term\r\n" {
			t.Errorf("exit %d, output %q; want stdin and stdout on a terminal", res.code, res.stdout)
		}
	})

	t.Run("tty window", func(t *testing.T) {
		res := run(t, &execv1.ExecStart{Argv: []string{"stty", "size"}, Tty: true, Stdin: true,
			Window: &execv1.WindowSize{Rows: 33, Cols: 97}})
		if got := strings.TrimSpace(string(res.stdout)); res.code != 0 || got != "33 97" {
			t.Errorf("stty size: exit %d, output %q; want 33 97", res.code, got)
		}
	})

	t.Run("tty resize", func(t *testing.T) {
		// The resize is applied before the line that lets stty run.
		res := run(t, &execv1.ExecStart{Argv: []string{"sh", "-c", "read x; stty size"}, Tty: true, Stdin: true,
			Window: &execv1.WindowSize{Rows: 10, Cols: 20}},
			&execv1.ExecRequest{Kind: &execv1.ExecRequest_Resize{Resize: &execv1.WindowSize{Rows: 41, Cols: 123}}},
			&execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: []byte("go\n")}})
		if res.code != 0 || !strings.Contains(string(res.stdout), "41 123") {
			t.Errorf("stty size after a resize: exit %d, output %q; want 41 123", res.code, res.stdout)
		}
	})

	t.Run("missing binary", func(t *testing.T) {
		_, err := execArgs(testContext(t, 30*time.Second), e.cc, e.shared.name, "/nonexistent/cabin-missing")
		wantCode(t, err, codes.NotFound, "/nonexistent/cabin-missing")
	})
}
