package ksm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func fakeDir(t *testing.T, run string) string {
	t.Helper()
	dir := t.TempDir()
	if run != "" {
		if err := os.WriteFile(filepath.Join(dir, "run"), []byte(run), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readRun(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "run"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEnableStarts(t *testing.T) {
	dir := fakeDir(t, "0\n")
	was, err := Enable(dir)
	if err != nil || was {
		t.Fatalf("Enable: was %v, %v; want false, nil", was, err)
	}
	if got := readRun(t, dir); got != "1\n" {
		t.Errorf("run is %q, want 1", got)
	}
}

func TestEnableAlreadyOn(t *testing.T) {
	dir := fakeDir(t, "1\n")
	was, err := Enable(dir)
	if err != nil || !was {
		t.Fatalf("Enable: was %v, %v; want true, nil", was, err)
	}
	if got := readRun(t, dir); got != "1\n" {
		t.Errorf("run is %q, want it untouched", got)
	}
}

func TestEnableRefuses(t *testing.T) {
	for _, run := range []string{"2\n", "on\n", ""} {
		dir := fakeDir(t, run)
		_, err := Enable(dir)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("run %q: got %v, want a failed precondition", run, err)
		}
		if run != "" {
			if got := readRun(t, dir); got != run {
				t.Errorf("run %q: now %q, want it untouched", run, got)
			}
		}
	}
}
