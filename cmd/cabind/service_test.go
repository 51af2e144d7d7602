package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallAndUnit runs `make install` into a scratch prefix and checks
// the unit it installs with systemd's own verifier, then that a second
// install keeps the operator's edited config.
func TestInstallAndUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (scripts/setup.sh installs systemd)")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"cabind", "cabin", "cabin-agent", "cabin-runtime"} {
		if _, err := os.Stat(filepath.Join(repo, "bin", b)); err != nil {
			t.Skipf("bin/%s not built (make test builds it first): %v", b, err)
		}
	}
	dir := t.TempDir()
	prefix, unitDir, confDir := filepath.Join(dir, "usr"), filepath.Join(dir, "units"), filepath.Join(dir, "etc")
	install := func() {
		t.Helper()
		cmd := exec.Command("make", "-s", "-C", repo, "install", "PREFIX="+prefix, "UNITDIR="+unitDir, "CONFDIR="+confDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	unit := filepath.Join(unitDir, "cabind.service")
	text, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=" + prefix + "/bin/cabind --config", "KillMode=process", "Type=notify"} {
		if !bytes.Contains(text, []byte(want)) {
			t.Errorf("unit lacks %q:\n%s", want, text)
		}
	}
	verify := func(path string) string {
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		if err != nil {
			return err.Error() + ": " + string(out)
		}
		return string(out)
	}
	// systemd-analyze verify exits 0 on some mistakes it only warns
	// about, so any output at all is a failure.
	if out := verify(unit); out != "" {
		t.Errorf("systemd-analyze verify: %s", out)
	}
	// The check catches what it is for: a kill mode systemd does not know.
	bad := filepath.Join(unitDir, "bad.service")
	if err := os.WriteFile(bad, bytes.Replace(text, []byte("KillMode=process"), []byte("KillMode=never"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := verify(bad); !strings.Contains(out, "kill mode") {
		t.Errorf("a bad unit passed verify: %q", out)
	}
	for _, b := range []string{"cabind", "cabin", "cabin-agent", "cabin-runtime"} {
		if st, err := os.Stat(filepath.Join(prefix, "bin", b)); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s installed: %v", b, err)
		}
	}
	conf := filepath.Join(confDir, "cabind.toml")
	if err := os.WriteFile(conf, []byte("net = \"user\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if got, _ := os.ReadFile(conf); string(got) != "net = \"user\"\n" {
		t.Errorf("a second install replaced the edited config: %q", got)
	}
}

// TestShippedConfig parses the config file make install ships with
// cabind's own flags: every key it names (commented out) is one cabind
// knows.
func TestShippedConfig(t *testing.T) {
	data, err := os.ReadFile("../../dist/cabind.toml")
	if err != nil {
		t.Fatal(err)
	}
	var uncommented []string
	for _, line := range strings.Split(string(data), "\n") {
		if k, ok := strings.CutPrefix(line, "#"); ok && strings.Contains(k, " = ") {
			uncommented = append(uncommented, k)
		}
	}
	if len(uncommented) < 5 {
		t.Fatalf("only %d settings in the shipped config", len(uncommented))
	}
	p := writeConfig(t, strings.Join(uncommented, "\n")+"\n")
	cfg, code, _, stderr := start(t, "--config", p)
	if code != 0 {
		t.Fatalf("the shipped config's settings, uncommented, are refused: %s", stderr)
	}
	if cfg.MetricsAddress == "" || cfg.NetPool == "" {
		t.Errorf("settings not applied: %+v", cfg)
	}
}
