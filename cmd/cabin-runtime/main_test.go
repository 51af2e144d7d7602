package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// TestUsage checks the command line's edge: usage errors exit 2 with one
// line on stderr, before any container is looked at. The containers
// themselves are tested in internal/container, through the built binary.
func TestUsage(t *testing.T) {
	root := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string // in stderr, or stdout for code 0
	}{
		{nil, 2, "no command"},
		{[]string{"--help"}, 0, "cabin-runtime [--root DIR] create --bundle DIR --pid-file FILE [--terminal] ID"},
		{[]string{"help"}, 0, "kill [--all] ID SIGNAL"},
		{[]string{"--root", root, "start", "-h"}, 0, "usage:"},
		{[]string{"--nope", "state", "x"}, 2, "cabin-runtime: flag provided but not defined: -nope"},
		{[]string{"--root", root, "list"}, 2, `unknown command "list"`},
		{[]string{"--root", root, "start"}, 2, "start: want one container ID, got 0 arguments"},
		{[]string{"--root", root, "pause", "a", "b"}, 2, "pause: want one container ID, got 2 arguments"},
		{[]string{"--root", root, "kill", "--all", "x"}, 2, "kill: want ID SIGNAL, got 1 arguments"},
		{[]string{"--root", root, "kill", "x", "SIGNOPE"}, 2, `signal "SIGNOPE": unknown`},
		{[]string{"--root", root, "delete", "--force=maybe", "x"}, 2, "delete: invalid boolean value"},
		{[]string{"--root", root, "state", "../x"}, 2, `container id: "../x"`},
		{[]string{"--root", root + "/", "state", "x"}, 2, "--root " + `"` + root + `/": not a clean path`},
		{[]string{"--root", root, "state", "x"}, 3, `container "x": no such container`},
		{[]string{"--root", root, "resume", "x"}, 3, `container "x": no such container`},
		{[]string{"features", "x"}, 2, "features: takes no arguments, got 1"},
		{[]string{"features"}, 0, `"ociVersionMax": "` + specs.Version + `"`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), c.args, &stdout, &stderr)
		out := stderr.String()
		if c.code == 0 {
			out = stdout.String()
		}
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and %q", c.args, code, stdout.String(), stderr.String(), c.code, c.want)
		}
		if c.code != 0 && strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%q: stderr %q is not one line", c.args, stderr.String())
		}
	}
}

// TestFeatures: the features document is JSON of the runtime-spec's
// features type, says what cabin-runtime does not do, and reports seccomp
// as the build has it (the test binary is built without libseccomp; the
// binary the Makefile builds has it, which internal/guest/kata's tests
// read).
func TestFeatures(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"features"}, &stdout, &stderr); code != 0 {
		t.Fatalf("features: exit %d, stderr %q", code, stderr.String())
	}
	var f features.Features
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("features output: %v", err)
	}
	l := f.Linux
	if l == nil || l.Cgroup == nil || l.Seccomp == nil || l.Seccomp.Enabled == nil || l.Apparmor == nil || l.Selinux == nil {
		t.Fatalf("features: linux section incomplete: %+v", l)
	}
	if *l.Cgroup.Systemd || *l.Apparmor.Enabled || *l.Selinux.Enabled {
		t.Errorf("features claims systemd %t, AppArmor %t, SELinux %t", *l.Cgroup.Systemd, *l.Apparmor.Enabled, *l.Selinux.Enabled)
	}
	if *l.Seccomp.Enabled != seccomp.Enabled || seccomp.Enabled && !slices.Contains(l.Seccomp.Actions, "SCMP_ACT_ERRNO") {
		t.Errorf("features seccomp %+v; built with libseccomp: %t", l.Seccomp, seccomp.Enabled)
	}
	if !slices.Contains(l.Namespaces, "user") || !slices.Contains(f.MountOptions, "ro") {
		t.Errorf("features: namespaces %v, mount options %v", l.Namespaces, f.MountOptions)
	}
}
