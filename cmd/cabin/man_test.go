package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPages generates the man pages from the command tree: one per
// visible command, each with what its --help says, examples included.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if r := runCLI(t, nil, "__man", dir); r.code != 0 {
		t.Fatalf("__man: %+v", r)
	}
	exec, err := os.ReadFile(filepath.Join(dir, "cabin-exec.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".TH \"CABIN\" \"1\"", "exec runs CMD", "EXAMPLE", "cabin exec -it web sh", "--workdir"} {
		if !strings.Contains(string(exec), want) {
			t.Errorf("cabin-exec.1 lacks %q", want)
		}
	}
	for _, page := range []string{"cabin.1", "cabin-vm-start.1", "cabin-shell.1", "cabin-version.1", "cabin-disk-create.1"} {
		if _, err := os.Stat(filepath.Join(dir, page)); err != nil {
			t.Errorf("no %s: %v", page, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cabin-__man.1")); err == nil {
		t.Error("the hidden __man command has a page")
	}
}
