package layout

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cabinvm/cabin/"

// pkg is a package of the module as the rules see it: its path inside the
// module, the packages it depends on (all of them, transitively, for what
// is compiled in) and those its tests import directly.
type pkg struct {
	path      string
	deps      []string
	testDeps  []string
	isCommand bool
}

// side says which program a package is for.
type side int

const (
	host   side = iota // cabind, the CLI, the bench
	guest              // cabin-agent, cabin-runtime
	shared             // both: the channel, the wire, what host and guest agree on
	tool               // build tools and test-only helpers
)

func sideOf(path string) side {
	switch {
	case under(path, "api", "internal/channel", "internal/unary", "internal/bootcfg",
		"internal/errdefs", "internal/errgrpc", "internal/version", "internal/names", "internal/dgram",
		"internal/tarcopy"):
		return shared
	case under(path, "internal/guest", "internal/guestinit", "internal/container", "internal/reaper",
		"cmd/cabin-agent", "cmd/cabin-runtime"):
		return guest
	case under(path, "tools", "integration", "internal/layout") || isTestHelper(path):
		return tool
	}
	return host
}

// isTestHelper tells a package only tests import (statedirtest,
// vmmtest, ...): it may fake whatever the tests need.
func isTestHelper(path string) bool {
	return strings.HasSuffix(filepath.Base(path), "test")
}

// speaksWire lists the packages that may know the wire: gRPC, protobuf and
// the API messages. Everything else is domain code, which they convert
// for.
func speaksWire(path string) bool {
	return isTestHelper(path) || under(path, "api", "cmd", "internal/channel", "internal/unary", "internal/errgrpc",
		"internal/edge", "internal/server", "internal/relay", "internal/guestlink", "internal/daemon",
		// An edge too: the Prometheus exposition, whose client library
		// is built on protobuf.
		"internal/metrics",
		"internal/client", "internal/guest", "tools", "integration", "internal/layout")
}

// under tells whether path is one of roots or below one.
func under(path string, roots ...string) bool {
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, r+"/") {
			return true
		}
	}
	return false
}

// isWire tells whether an import path is of the wire: gRPC, protobuf, or
// the module's API messages.
func isWire(imp string) bool {
	return strings.HasPrefix(imp, "google.golang.org/grpc") || strings.HasPrefix(imp, "google.golang.org/protobuf") ||
		strings.HasPrefix(imp, module+"api/") || strings.HasPrefix(imp, "github.com/golang/protobuf")
}

// check returns every broken rule.
func check(pkgs []pkg) []string {
	var broken []string
	for _, p := range pkgs {
		inModule := func(deps []string) []string {
			var out []string
			for _, d := range deps {
				if rest, ok := strings.CutPrefix(d, module); ok {
					out = append(out, rest)
				}
			}
			return out
		}
		// Domain code, errdefs among it, knows no wire, in what it
		// compiles in or in its tests' own imports.
		if !speaksWire(p.path) {
			for _, d := range append(slices.Clone(p.deps), p.testDeps...) {
				if isWire(d) {
					broken = append(broken, fmt.Sprintf("%s depends on %s: only edges speak the wire", p.path, d))
					break
				}
			}
		}
		// Host and guest share nothing but the shared packages.
		s := sideOf(p.path)
		for _, d := range inModule(p.deps) {
			ds := sideOf(d)
			if (s == host && ds == guest) || (s == guest && ds == host) || (s == shared && (ds == host || ds == guest)) {
				broken = append(broken, fmt.Sprintf("%s (%s) depends on %s (%s)", p.path, s, d, ds))
			}
		}
		// Fakes are for tests: no program links a test helper.
		if s != tool {
			for _, d := range inModule(p.deps) {
				if isTestHelper(d) {
					broken = append(broken, fmt.Sprintf("%s depends on %s: test helpers are for tests", p.path, d))
				}
			}
		}
		// Edges depend on the domain, never the reverse: only the
		// composition root and other edges reach an edge or the socket
		// server.
		if !under(p.path, "internal/daemon", "internal/edge", "cmd/cabind") {
			for _, d := range inModule(p.deps) {
				if under(d, "internal/edge", "internal/daemon") {
					broken = append(broken, fmt.Sprintf("%s depends on %s: nothing but the composition root uses an edge", p.path, d))
				}
			}
		}
	}
	return broken
}

func (s side) String() string {
	return [...]string{"host", "guest", "shared", "tool"}[s]
}

// listPackages lists the module's packages with go list.
func listPackages(t *testing.T) []pkg {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the packages")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-f",
		`{{.ImportPath}}|{{.Name}}|{{join .Deps " "}}|{{join .TestImports " "}} {{join .XTestImports " "}}`, "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.String())
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) != 4 {
			t.Fatalf("go list line %q", sc.Text())
		}
		path, ok := strings.CutPrefix(f[0], module)
		if !ok {
			continue
		}
		pkgs = append(pkgs, pkg{path: path, isCommand: f[1] == "main", deps: strings.Fields(f[2]), testDeps: strings.Fields(f[3])})
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; the test is not looking at the module", len(pkgs))
	}
	return pkgs
}

// TestLayout checks the import rules on the module as it is.
func TestLayout(t *testing.T) {
	for _, b := range check(listPackages(t)) {
		t.Error(b)
	}
}

// TestLayoutRulesBite checks that each rule catches what it is for, so
// that TestLayout passing means something.
func TestLayoutRulesBite(t *testing.T) {
	for _, c := range []struct {
		name string
		p    pkg
		want string
	}{
		{"vmm imports protobuf", pkg{path: "internal/vmm", deps: []string{"google.golang.org/protobuf/proto"}}, "only edges speak the wire"},
		{"vmm's test fakes a gRPC guest", pkg{path: "internal/vmm", testDeps: []string{"google.golang.org/grpc"}}, "only edges speak the wire"},
		{"a resource imports the API", pkg{path: "internal/network", deps: []string{module + "api/vmtools"}}, "only edges speak the wire"},
		{"errdefs imports gRPC", pkg{path: "internal/errdefs", deps: []string{"google.golang.org/grpc/codes"}}, "only edges speak the wire"},
		{"the agent imports the manager", pkg{path: "internal/guest/maitred", deps: []string{module + "internal/vmm"}}, "(guest) depends on internal/vmm (host)"},
		{"cabind imports the runtime", pkg{path: "internal/vmm", deps: []string{module + "internal/container"}}, "(host) depends on internal/container (guest)"},
		{"the channel imports the daemon", pkg{path: "internal/channel", deps: []string{module + "internal/daemon"}}, "(shared) depends on internal/daemon (host)"},
		{"the manager imports an edge", pkg{path: "internal/vmm", deps: []string{module + "internal/edge/concierge"}}, "nothing but the composition root uses an edge"},
		{"cabind links a fake", pkg{path: "internal/daemon", deps: []string{module + "internal/vmm/vmmtest"}}, "test helpers are for tests"},
	} {
		broken := check([]pkg{c.p})
		if len(broken) == 0 || !strings.Contains(strings.Join(broken, "\n"), c.want) {
			t.Errorf("%s: check found %q, want a break saying %q", c.name, broken, c.want)
		}
	}
	if broken := check([]pkg{{path: "internal/edge/concierge", deps: []string{module + "internal/vmm", "google.golang.org/grpc"}}}); len(broken) > 0 {
		t.Errorf("an edge over the domain broke %q", broken)
	}
}
