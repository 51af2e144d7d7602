package storage

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/reaper"
)

// maxOutput is how much of a tool's output is kept, for errors and logs.
const maxOutput = 16 << 10

// result is how a tool's run ended, and what it printed (stdout and
// stderr together, the start of it).
type result struct {
	argv   []string
	exit   reaper.Exit
	output string
}

func (r result) ok() bool { return r.exit.Code == 0 && r.exit.Signal == 0 }

// fsckRepaired tells an e2fsck run that left the filesystem consistent:
// exit 0 (nothing wrong), 1 (errors fixed) or 2 (fixed, reboot advised),
// not 4 (errors left) or 8 and above (it could not run).
func (r result) fsckRepaired() bool { return r.exit.Signal == 0 && r.exit.Code&^3 == 0 }

func (r result) String() string {
	what := fmt.Sprintf("%s: %v", strings.Join(r.argv, " "), r.exit)
	if out := strings.TrimSpace(r.output); out != "" {
		what += ": " + out
	}
	return what
}

// run runs the tool name (looked up in PATH) with args to its end. The
// error is for a tool that could not start; how it ended is in the
// result. Not cut short by ctx: a filesystem tool stopped halfway leaves
// the disk worse than a late answer.
func (s *Stateful) run(ctx context.Context, name string, args ...string) (result, error) {
	if err := s.cfg.WaitShare.For(ctx, name); err != nil {
		return result{}, err
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return result{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is not in this guest image: %w", name, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		w.Close()
		return result{}, err
	}
	defer null.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, w, w
	_, exits, err := s.cfg.Reaper.StartCmd(cmd)
	w.Close()
	if err != nil {
		return result{}, fmt.Errorf("start %s: %w", name, err)
	}
	// Keep the start of the output; drain the rest so the tool never
	// blocks on a full pipe.
	out, _ := io.ReadAll(io.LimitReader(r, maxOutput))
	io.Copy(io.Discard, r)
	res := result{argv: append([]string{name}, args...), exit: <-exits, output: string(out)}
	s.log.Debug("ran", "argv", res.argv, "exit", res.exit.String())
	return res, nil
}
