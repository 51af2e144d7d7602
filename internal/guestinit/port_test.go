package guestinit

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

func TestFindPort(t *testing.T) {
	sysfs := t.TempDir()
	for dev, name := range map[string]string{"vport0p1": "other", "vport0p2": bootcfg.AgentPort} {
		os.MkdirAll(filepath.Join(sysfs, dev), 0o755)
		os.WriteFile(filepath.Join(sysfs, dev, "name"), []byte(name+"\n"), 0o644)
	}
	got, err := FindPort(sysfs, bootcfg.AgentPort)
	if err != nil || got != "/dev/vport0p2" {
		t.Fatalf("FindPort = %q, %v", got, err)
	}
	if _, err := FindPort(sysfs, "missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing port: %v", err)
	}
}
