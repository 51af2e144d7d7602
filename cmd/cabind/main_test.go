package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/daemon"
)

// start runs cabind's command line with a daemon that only records the
// configuration it was given.
func start(t *testing.T, args ...string) (daemon.Config, int, string, string) {
	t.Helper()
	var got daemon.Config
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, func(_ context.Context, cfg daemon.Config) error {
		got = cfg
		return nil
	})
	return got, code, stdout.String(), stderr.String()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cabind.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFileAndFlags(t *testing.T) {
	p := writeConfig(t, "net = \"user\"\nmemory = 1024\nmetrics-address = \"127.0.0.1:9125\"\nstate-dir = \"/srv/cabin\"\n")
	cfg, code, _, stderr := start(t, "--config", p, "--memory", "768")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if cfg.Net != "user" || cfg.StateDir != "/srv/cabin" || cfg.MetricsAddress != "127.0.0.1:9125" {
		t.Errorf("from the file: net=%q state-dir=%q metrics=%q", cfg.Net, cfg.StateDir, cfg.MetricsAddress)
	}
	if cfg.DefaultMemoryMiB != 768 {
		t.Errorf("memory = %d, want the flag's 768 over the file's 1024", cfg.DefaultMemoryMiB)
	}
	if cfg.Ready == nil || cfg.Log == nil {
		t.Error("no readiness notice or logger")
	}
}

func TestUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown flag":        {[]string{"--nosuch"}, "unknown flag: --nosuch"},
		"an argument":         {[]string{"serve"}, `unknown command "serve"`},
		"missing config":      {[]string{"--config", missing}, "nope.toml"},
		"unknown config key":  {[]string{"--config", writeConfig(t, "sockets = \"/x\"\n")}, `unknown key "sockets"`},
		"bad value in config": {[]string{"--config", writeConfig(t, "memory = \"lots\"\n")}, `key "memory"`},
		"bad log format":      {[]string{"--config", writeConfig(t, ""), "--log-format", "xml"}, "--log-format"},
	} {
		t.Run(name, func(t *testing.T) {
			_, code, _, stderr := start(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	_, code, stdout, _ := start(t, "--version")
	if code != 0 || !strings.HasPrefix(stdout, "cabind ") {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}
	_, code, stdout, _ = start(t, "--help")
	if code != 0 || !strings.Contains(stdout, "--metrics-address") || !strings.Contains(stdout, "cabind.toml") {
		t.Errorf("--help: exit %d, %q", code, stdout)
	}
}

func TestKernelSetting(t *testing.T) {
	cfg, code, _, stderr := start(t, "--config", "")
	if code != 0 || cfg.Kernel != "auto" {
		t.Errorf("default kernel %q (exit %d: %s), want auto", cfg.Kernel, code, stderr)
	}
	cfg, code, _, stderr = start(t, "--config", writeConfig(t, "kernel = \"generic\"\n"))
	if code != 0 || cfg.Kernel != "generic" {
		t.Errorf("kernel from the file %q (exit %d: %s), want generic", cfg.Kernel, code, stderr)
	}
	cfg, _, _, _ = start(t, "--config", writeConfig(t, "kernel = \"generic\"\n"), "--kernel", "/srv/vmlinux")
	if cfg.Kernel != "/srv/vmlinux" {
		t.Errorf("kernel %q, want the flag's over the file's", cfg.Kernel)
	}
}
