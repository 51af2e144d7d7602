package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/version"
)

// TestVersionWithoutDaemon: cabin's own version shows even when cabind
// does not answer, and the command says it could not reach it.
func TestVersionWithoutDaemon(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "none.sock")
	r := runCLI(t, nil, "--socket", socket, "version")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "cabin ") || !strings.Contains(r.stdout, version.Version) || !strings.Contains(r.stderr, socket) {
		t.Errorf("got %+v; want cabin's version, exit 1 and the socket named", r)
	}
	if strings.Contains(r.stdout, "cabind") {
		t.Errorf("a cabind version without a cabind: %q", r.stdout)
	}
	r = runCLI(t, nil, "--socket", socket, "version", "--json")
	var v map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v["client"] != version.Version {
		t.Errorf("version --json: %q (%v)", r.stdout, err)
	}
	if _, ok := v["cabind"]; ok {
		t.Errorf("version --json names a cabind it did not reach: %q", r.stdout)
	}
	r = runCLI(t, nil, "--version")
	if r.code != 0 || r.stdout != "cabin "+version.Version+"\n" {
		t.Errorf("--version: %+v", r)
	}
}
