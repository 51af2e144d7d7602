package kata

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMemBlockSize(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "block_size_bytes")
	if got, err := memBlockSize(file); got != 0 || err != nil {
		t.Errorf("no file: %d, %v; want 0", got, err)
	}
	os.WriteFile(file, []byte("8000000\n"), 0o644)
	if got, err := memBlockSize(file); got != 128<<20 || err != nil {
		t.Errorf("8000000: %d, %v; want 128 MiB", got, err)
	}
	os.WriteFile(file, []byte("lots\n"), 0o644)
	if _, err := memBlockSize(file); err == nil {
		t.Error("not hex: no error")
	}
}

func TestKernelSeccomp(t *testing.T) {
	dir := t.TempDir()
	with, without := filepath.Join(dir, "with"), filepath.Join(dir, "without")
	os.WriteFile(with, []byte("Name:\tagent\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n"), 0o644)
	os.WriteFile(without, []byte("Name:\tagent\nNoNewPrivs:\t0\n"), 0o644)
	if !kernelSeccomp(with) || kernelSeccomp(without) || kernelSeccomp(filepath.Join(dir, "missing")) {
		t.Errorf("kernelSeccomp: with %t, without %t, missing %t", kernelSeccomp(with), kernelSeccomp(without), kernelSeccomp(filepath.Join(dir, "missing")))
	}
}
