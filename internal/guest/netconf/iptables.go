package netconf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// The programs the rules are read and written with, looked up in PATH:
// Debian's iptables in the guest image (xtables-legacy-multi), Kata's
// agent's choice of interface.
const (
	iptablesSave     = "iptables-save"
	iptablesRestore  = "iptables-restore"
	ip6tablesSave    = "ip6tables-save"
	ip6tablesRestore = "ip6tables-restore"
)

// maxRulesOutput bounds what the programs may print: more than a gRPC
// message carries is not rules anyone can use.
const maxRulesOutput = 4 << 20

// IPTables returns the rules (iptables-save's output), IPv6's if v6.
func (n *Net) IPTables(ctx context.Context, v6 bool) ([]byte, error) {
	if err := n.cfg.WaitModules(ctx); err != nil {
		return nil, fmt.Errorf("netfilter modules: %w", err)
	}
	if err := n.waitShare(ctx); err != nil {
		return nil, err
	}
	save := iptablesSave
	if v6 {
		save = ip6tablesSave
	}
	out, err := n.runRules(save, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetIPTables replaces the rules of the tables rules names with them
// (iptables-restore, IPv6's if v6) and returns what it printed. Rules it
// cannot read are InvalidArgument, with its complaint, and change
// nothing: they are tried first (--test). If the kernel then refuses them,
// the rules saved before are restored.
func (n *Net) SetIPTables(ctx context.Context, v6 bool, rules []byte) ([]byte, error) {
	if err := n.cfg.WaitModules(ctx); err != nil {
		return nil, fmt.Errorf("netfilter modules: %w", err)
	}
	if err := n.waitShare(ctx); err != nil {
		return nil, err
	}
	save, restore := iptablesSave, iptablesRestore
	if v6 {
		save, restore = ip6tablesSave, ip6tablesRestore
	}
	if _, err := n.runRules(restore, rules, "--test"); err != nil {
		var pe *programError
		if errors.As(err, &pe) {
			return nil, errdefs.InvalidArgument("data", fmt.Sprintf("%s refuses the rules: %s", restore, pe.stderr))
		}
		return nil, err
	}
	before, err := n.runRules(save, nil)
	if err != nil {
		return nil, err
	}
	out, err := n.runRules(restore, rules)
	if err != nil {
		if _, rerr := n.runRules(restore, before); rerr != nil {
			return nil, fmt.Errorf("%w (and restoring the rules before: %v)", err, rerr)
		}
		// Read, but refused by the kernel (a jump to a chain that is
		// not there, with the nf_tables backend): the rules are the
		// caller's fault all the same.
		var pe *programError
		if errors.As(err, &pe) {
			return nil, errdefs.InvalidArgument("data", fmt.Sprintf("%s refuses the rules: %s", restore, pe.stderr))
		}
		return nil, err
	}
	n.log.Info("iptables rules set", "ipv6", v6, "bytes", len(rules))
	return out, nil
}

// programError is a program that ran and failed.
type programError struct {
	prog   string
	exit   string
	stderr string
}

func (e *programError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.prog, e.exit, e.stderr)
}

// runRules runs prog with args in the namespace, stdin given, and returns
// its output.
func (n *Net) runRules(prog string, stdin []byte, args ...string) ([]byte, error) {
	path, err := exec.LookPath(prog)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "%s is not in the guest: %w", prog, err)
	}
	if n.cfg.Reaper == nil {
		return nil, fmt.Errorf("%s: no reaper to run it with", prog)
	}
	var out []byte
	err = n.do(func() error {
		var err error
		out, err = n.run(path, stdin, args)
		return err
	})
	return out, err
}

// run runs path through the reaper, feeding stdin, and collects stdout and
// the start of stderr. The program is forked by the calling thread, so it
// is in the namespace that thread is in.
func (n *Net) run(path string, stdin []byte, args []string) ([]byte, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer inR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		inW.Close()
		return nil, err
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		inW.Close()
		outW.Close()
		return nil, err
	}
	defer errR.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	_, exits, err := n.cfg.Reaper.StartCmd(cmd)
	outW.Close()
	errW.Close()
	inR.Close()
	if err != nil {
		inW.Close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	go func() {
		// A program that stops reading gets EPIPE, not a writer stuck.
		inW.Write(stdin)
		inW.Close()
	}()
	var stderr bytes.Buffer
	errDone := make(chan struct{})
	go func() {
		io.Copy(&stderr, io.LimitReader(errR, 4<<10))
		io.Copy(io.Discard, errR)
		close(errDone)
	}()
	out, rerr := io.ReadAll(io.LimitReader(outR, maxRulesOutput+1))
	io.Copy(io.Discard, outR)
	<-errDone
	// Not cut short by a caller that went away: a restore half done
	// is worse than a late answer.
	e := <-exits
	if e.Code != 0 || e.Signal != 0 {
		return nil, &programError{prog: path, exit: e.String(), stderr: strings.TrimSpace(stderr.String())}
	}
	if rerr != nil {
		return nil, fmt.Errorf("%s: read output: %w", path, rerr)
	}
	if len(out) > maxRulesOutput {
		return nil, fmt.Errorf("%s: printed more than %d bytes", path, maxRulesOutput)
	}
	return out, nil
}

// waitShare waits for the guest image's share, where iptables is.
func (n *Net) waitShare(ctx context.Context) error {
	return n.cfg.WaitShare.For(ctx, "iptables")
}
