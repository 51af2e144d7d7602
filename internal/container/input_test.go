package container

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cabinvm/cabin/internal/guest/cgroup/cgrouptest"
)

// TestBadInput runs cabin-runtime with bad arguments and specs: each must
// exit 2 with one line naming what was wrong, and create nothing.
func TestBadInput(t *testing.T) {
	h := newHarness(t)
	good := writeBundle(t, testSpec("bad", "report", "0"))
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "x.pid")
	bundle := func(mutate func(*specs.Spec)) string {
		s := testSpec("bad", "report", "0")
		mutate(s)
		return writeBundle(t, s)
	}
	notJSON := t.TempDir()
	os.WriteFile(filepath.Join(notJSON, specFile), []byte("{"), 0o644)
	procFile := filepath.Join(dir, "process.json")
	writeJSON(t, procFile, probeProcess("report", "0"))

	for _, c := range []struct {
		name  string
		args  []string
		stdio bool // pass fds 3, 4 and 5
		want  string
	}{
		{"id ../x", []string{"create", "--bundle", good, "--pid-file", pidFile, "../x"}, true, `container id: "../x" starts with '.'`},
		{"id a/../x", []string{"create", "--bundle", good, "--pid-file", pidFile, "a/../x"}, true, `container id: "a/../x" has '/'`},
		{"empty id", []string{"create", "--bundle", good, "--pid-file", pidFile, ""}, true, "container id: must not be empty"},
		{"id of 65", []string{"create", "--bundle", good, "--pid-file", pidFile, strings.Repeat("a", 65)}, true, "65 characters; at most 64"},
		{"id .x", []string{"create", "--bundle", good, "--pid-file", pidFile, ".x"}, true, `starts with '.'`},
		{"id -x", []string{"create", "--bundle", good, "--pid-file", pidFile, "--", "-x"}, true, `starts with '-'`},
		{"no id", []string{"create", "--bundle", good, "--pid-file", pidFile}, true, "want one container ID, got 0"},
		{"two ids", []string{"state", "a", "b"}, false, "want one container ID, got 2"},
		{"missing bundle", []string{"create", "--bundle", "/nonexistent/bundle", "--pid-file", pidFile, "c"}, true, "--bundle: stat /nonexistent/bundle: no such file"},
		{"relative bundle", []string{"create", "--bundle", "bundle", "--pid-file", pidFile, "c"}, true, `--bundle "bundle": not an absolute path`},
		{"no config.json", []string{"create", "--bundle", t.TempDir(), "--pid-file", pidFile, "c"}, true, "config.json: no such file"},
		{"bad config.json", []string{"create", "--bundle", notJSON, "--pid-file", pidFile, "c"}, true, "config.json: unexpected end of JSON input"},
		{"relative pid file", []string{"create", "--bundle", good, "--pid-file", "x.pid", "c"}, true, `--pid-file "x.pid": not an absolute path`},
		{"unclean pid file", []string{"create", "--bundle", good, "--pid-file", dir + "/../x.pid", "c"}, true, "--pid-file " + `"` + dir + `/../x.pid": not a clean path`},
		{"pid file dir missing", []string{"create", "--bundle", good, "--pid-file", "/nonexistent/x.pid", "c"}, true, "--pid-file: directory: stat /nonexistent: no such file"},
		{"no stdio", []string{"create", "--bundle", good, "--pid-file", pidFile, "c"}, false, "stdio: fd 3: not passed"},
		{"terminal without socket", []string{"create", "--bundle", good, "--pid-file", pidFile, "--terminal", "c"}, true, "--terminal: fd 3: not a socket"},
		{"terminal mismatch", []string{"create", "--bundle", bundle(func(s *specs.Spec) { s.Process.Terminal = true }), "--pid-file", pidFile, "c"}, true, "process.terminal is true but --terminal is false"},
		{"seccomp action", []string{"create", "--bundle", bundle(func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: "SCMP_ACT_NO_SUCH"}
		}), "--pid-file", pidFile, "c"}, true, "SCMP_ACT_NO_SUCH"},
		{"seccomp operator", []string{"create", "--bundle", bundle(func(s *specs.Spec) {
			s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{
				{Names: []string{"read"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Op: "SCMP_CMP_NOPE"}}},
			}}
		}), "--pid-file", pidFile, "c"}, true, "SCMP_CMP_NOPE"},
		{"relative cgroupsPath", []string{"create", "--bundle", bundle(func(s *specs.Spec) { s.Linux.CgroupsPath = "x/y" }), "--pid-file", pidFile, "c"}, true, `linux.cgroupsPath "x/y": not an absolute path`},
		{"no args", []string{"create", "--bundle", bundle(func(s *specs.Spec) { s.Process.Args = nil }), "--pid-file", pidFile, "c"}, true, "process.args: empty"},
		{"missing root", []string{"create", "--bundle", bundle(func(s *specs.Spec) { s.Root.Path = "/nonexistent/rootfs" }), "--pid-file", pidFile, "c"}, true, "root.path: stat /nonexistent/rootfs"},
		{"old ociVersion", []string{"create", "--bundle", bundle(func(s *specs.Spec) { s.Version = "0.9" }), "--pid-file", pidFile, "c"}, true, `ociVersion "0.9": not 1.x`},
		{"bad rlimit", []string{"create", "--bundle", bundle(func(s *specs.Spec) {
			s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOPE"}}
		}), "--pid-file", pidFile, "c"}, true, `process.rlimits: unknown type "RLIMIT_NOPE"`},
		{"bad namespace", []string{"create", "--bundle", bundle(func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "nope"})
		}), "--pid-file", pidFile, "c"}, true, `spec: namespace {"nope" ""} does not exist`},
		{"bad signal name", []string{"kill", "c", "NOPE"}, false, `signal "NOPE": unknown`},
		{"signal 0", []string{"kill", "c", "0"}, false, `signal "0": out of range`},
		{"signal 65", []string{"kill", "c", "65"}, false, `signal "65": out of range`},
		{"kill without signal", []string{"kill", "c"}, false, "kill: want ID SIGNAL, got 1"},
		{"relative process", []string{"exec", "--process", "p.json", "--pid-file", pidFile, "c"}, true, `--process "p.json": not an absolute path`},
		{"exec bad id", []string{"exec", "--process", procFile, "--pid-file", pidFile, "a/b"}, true, `container id: "a/b"`},
		{"unknown flag", []string{"delete", "--forse", "c"}, false, "delete: flag provided but not defined: -forse"},
		{"unknown command", []string{"frobnicate", "c"}, false, `unknown command "frobnicate"`},
		{"no command", nil, false, "no command"},
		{"relative root", []string{"--root", "run/x", "state", "c"}, false, `--root "run/x": not an absolute path`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var files []*os.File
			if c.stdio {
				p := newPipes(t)
				files = p.child
			}
			r := h.run(files, c.args...)
			if r.code != 2 {
				t.Errorf("%v, want exit 2", r)
			}
			if !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("stderr %q, want one line containing %q", r.stderr, c.want)
			}
			if entries, err := os.ReadDir(h.root); err == nil && len(entries) > 0 {
				t.Errorf("root holds %d entries after a bad create", len(entries))
			}
			if _, err := os.Stat(pidFile); err == nil {
				t.Error("pid file written")
			}
			if dirs := cgrouptest.Dirs(cgroupTop + "/bad"); len(dirs) > 0 {
				t.Errorf("cgroups made: %v", dirs)
			}
			if t.Failed() {
				// Keep a create that should have failed from spoiling
				// the cases after it.
				h.run(nil, "delete", "--force", "c")
			}
		})
	}
}

// TestNotFound: operations on an unknown container exit 3.
func TestNotFound(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	procFile := filepath.Join(dir, "process.json")
	writeJSON(t, procFile, probeProcess("report", "0"))
	p := newPipes(t)
	for _, args := range [][]string{
		{"start", "nope"},
		{"state", "nope"},
		{"kill", "nope", "KILL"},
		{"kill", "--all", "nope", "KILL"},
		{"delete", "nope"},
		{"delete", "--force", "nope"},
		{"pause", "nope"},
		{"resume", "nope"},
		{"exec", "--process", procFile, "--pid-file", filepath.Join(dir, "x.pid"), "nope"},
	} {
		r := h.run(p.child, args...)
		if r.code != 3 || !strings.Contains(r.stderr, `container "nope": no such container`) {
			t.Errorf("%v: %v, want exit 3", args, r)
		}
	}
}

// TestExists: creating a container whose id is taken exits 4 and leaves
// the existing container alone.
func TestExists(t *testing.T) {
	h := newHarness(t)
	const id = "dup"
	p := newPipes(t)
	pid := h.create(id, testSpec(id, "trap"), p.child)
	p.handedOver()

	p2 := newPipes(t)
	pidFile := filepath.Join(t.TempDir(), "x.pid")
	r := h.run(p2.child, "create", "--bundle", writeBundle(t, testSpec(id, "trap")), "--pid-file", pidFile, id)
	if r.code != 4 || !strings.Contains(r.stderr, `container "dup": container exists`) {
		t.Errorf("second create: %v, want exit 4", r)
	}
	if _, err := os.Stat(pidFile); err == nil {
		t.Error("second create wrote its pid file")
	}
	if s := h.wantStatus(id, "created"); s.Pid != pid {
		t.Errorf("existing container's pid is %d, was %d", s.Pid, pid)
	}
	h.must(nil, "start", id)
	p.stdout.expect(t, "ready")
}

// TestStaleState: a state directory without state, as a create that died
// part way leaves, takes its id until delete removes it.
func TestStaleState(t *testing.T) {
	h := newHarness(t)
	const id = "stale"
	if err := os.MkdirAll(filepath.Join(h.root, id), 0o711); err != nil {
		t.Fatal(err)
	}
	p := newPipes(t)
	pidFile := filepath.Join(t.TempDir(), "x.pid")
	bundle := writeBundle(t, testSpec(id, "report", "0"))
	if r := h.run(p.child, "create", "--bundle", bundle, "--pid-file", pidFile, id); r.code != 4 {
		t.Errorf("create over a stale directory: %v, want exit 4", r)
	}
	if r := h.run(nil, "state", id); r.code != 3 {
		t.Errorf("state of a stale directory: %v, want exit 3", r)
	}
	h.must(nil, "delete", id)
	if _, err := os.Stat(filepath.Join(h.root, id)); !os.IsNotExist(err) {
		t.Errorf("stale directory after delete: %v", err)
	}
	if r := h.run(nil, "delete", id); r.code != 3 {
		t.Errorf("second delete: %v, want exit 3", r)
	}
}
