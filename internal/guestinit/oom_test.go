package guestinit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSetOOMScoreAdj(t *testing.T) {
	procfs := t.TempDir()
	f := filepath.Join(procfs, "self", "oom_score_adj")
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SetOOMScoreAdj(procfs, AgentOOMScoreAdj); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "-997" {
		t.Errorf("oom_score_adj %q", b)
	}
	if err := SetOOMScoreAdj(filepath.Join(procfs, "absent"), 0); err == nil {
		t.Error("no error without the file")
	}
}
