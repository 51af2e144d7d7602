package main

import (
	"path"
	"strings"

	"github.com/spf13/pflag"
)

// processFlags are what exec and run set about the process beyond its
// argv: -e, -w and -u, as docker's.
type processFlags struct {
	env     []string
	workdir string
	user    string
}

func (p *processFlags) add(f *pflag.FlagSet) {
	f.StringArrayVarP(&p.env, "env", "e", nil, "set an environment variable, K=V; K alone passes cabin's own value of K (repeatable)")
	f.StringVarP(&p.workdir, "workdir", "w", "", "working directory of the command (an absolute path in the guest)")
	f.StringVarP(&p.user, "user", "u", "", "run as NAME, UID, NAME:GROUP or UID:GID (default root)")
}

// environ is -e as a map, K alone taking cabin's own value (and left out
// when cabin has none, as docker does), and with a terminal TERM set to
// cabin's unless -e sets it.
func (p *processFlags) environ(getenv func(string) string, tty bool) (map[string]string, error) {
	env := map[string]string{}
	if term := getenv("TERM"); tty && term != "" {
		env["TERM"] = term
	}
	for _, e := range p.env {
		k, v, hasValue := strings.Cut(e, "=")
		if k == "" || strings.ContainsRune(e, 0) {
			return nil, usagef("-e %q: want K=V or K", e)
		}
		if !hasValue {
			if v = getenv(k); v == "" {
				continue
			}
		}
		env[k] = v
	}
	return env, nil
}

// check checks -w and -u before anything is sent; the guest checks them
// again.
func (p *processFlags) check() error {
	if p.workdir != "" && (!path.IsAbs(p.workdir) || strings.ContainsRune(p.workdir, 0)) {
		return usagef("-w %q: want an absolute path in the guest", p.workdir)
	}
	if strings.ContainsAny(p.user, "\x00/ ") || strings.Count(p.user, ":") > 1 || strings.HasPrefix(p.user, ":") {
		return usagef("-u %q: want NAME, UID, NAME:GROUP or UID:GID", p.user)
	}
	return nil
}

// startFailedError is a command the guest could not start: cabin prints
// why and exits with code, 127 (not found) or 126 (not runnable), as a
// shell and docker do.
type startFailedError struct {
	code int
	err  error
}

func (e *startFailedError) Error() string { return e.err.Error() }
func (e *startFailedError) Unwrap() error { return e.err }
