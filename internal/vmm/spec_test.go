package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// TestSpecBootPaths checks that a kernel or initrd path QEMU would read as
// more than one file is refused, naming the field: QEMU splits -initrd on
// commas into multiboot modules, a space starting a module's arguments, so
// "/home/u/a,/etc/shadow" would have it load /etc/shadow into the guest.
// The files exist, so only their names can be at fault.
func TestSpecBootPaths(t *testing.T) {
	dir := t.TempDir()
	names := []string{"vmlinux", "a,b", "a b", "a\tb", "a\nb", "a\u00a0b", "a\x01b", "a\x7fb"}
	for _, name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("boot"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A link with a harmless name to a file whose name is not.
	if err := os.Symlink("a,b", filepath.Join(dir, "comma-link")); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	host := Host{CPUs: 4, MemoryMiB: 4096}

	tests := []struct {
		name   string
		field  string // kernel_path or initrd_path
		file   string
		wantIn string // in the error; empty when the spec is valid
	}{
		{"plain kernel", "kernel_path", "vmlinux", ""},
		{"plain initrd", "initrd_path", "vmlinux", ""},
		{"kernel with comma", "kernel_path", "a,b", "comma"},
		{"initrd with comma", "initrd_path", "a,b", "comma"},
		{"kernel with space", "kernel_path", "a b", "whitespace"},
		{"initrd with space", "initrd_path", "a b", "whitespace"},
		{"kernel with tab", "kernel_path", "a\tb", "whitespace"},
		{"initrd with tab", "initrd_path", "a\tb", "whitespace"},
		{"kernel with newline", "kernel_path", "a\nb", "whitespace"},
		{"initrd with newline", "initrd_path", "a\nb", "whitespace"},
		{"initrd with non-breaking space", "initrd_path", "a\u00a0b", "whitespace"},
		{"initrd with control character", "initrd_path", "a\x01b", "control"},
		{"initrd with delete", "initrd_path", "a\x7fb", "control"},
		{"kernel linked to a name with a comma", "kernel_path", "comma-link", "leads to a path that holds a comma"},
		{"initrd linked to a name with a comma", "initrd_path", "comma-link", "leads to a path that holds a comma"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec("boot")
			path := filepath.Join(dir, tt.file)
			s.Kernel = path
			if tt.field == "initrd_path" {
				s.Kernel, s.Initrd = kernel, path
			}
			boot, err := validateAndOpen(&s, host)
			boot.Close()
			if tt.wantIn == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Fatalf("validate = %v, want invalid argument naming %s", err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("validate = %v, want it to say %q", err, tt.wantIn)
			}
		})
	}
}

// TestSpecResolvesBootPaths checks that validate hands on what it checked:
// the files links lead to, not the links.
func TestSpecResolvesBootPaths(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"vmlinux", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("boot"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "links"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"k": "../vmlinux", "i": "../initrd.img"} {
		if err := os.Symlink(target, filepath.Join(dir, "links", link)); err != nil {
			t.Fatal(err)
		}
	}
	s := spec("links")
	s.Kernel = filepath.Join(dir, "links", "k")
	s.Initrd = filepath.Join(dir, "links", "i")
	boot, err := validateAndOpen(&s, Host{CPUs: 4, MemoryMiB: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Close()
	if want := filepath.Join(dir, "vmlinux"); s.Kernel != want {
		t.Errorf("Kernel = %q, want %q", s.Kernel, want)
	}
	if want := filepath.Join(dir, "initrd.img"); s.Initrd != want {
		t.Errorf("Initrd = %q, want %q", s.Initrd, want)
	}
	// The files are open, and they are the files the paths name.
	for _, f := range []struct {
		file *os.File
		path string
	}{{boot.kernel, s.Kernel}, {boot.initrd, s.Initrd}} {
		if f.file == nil {
			t.Errorf("%s not opened", f.path)
			continue
		}
		if !sameFile(t, f.file, f.path) {
			t.Errorf("the file opened for %s is another", f.path)
		}
	}
}

// sameFile reports whether f is the file at path.
func sameFile(t *testing.T, f *os.File, path string) bool {
	t.Helper()
	a, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(a, b)
}

// validateAndOpen checks s as Manager.Start does.
func validateAndOpen(s *Spec, host Host) (bootFiles, error) {
	if err := s.validate(host, 256); err != nil {
		return bootFiles{}, err
	}
	return s.openFiles()
}

// TestSpecOpenFilesClosesOnError checks that a kernel opened before its
// initrd is refused is not left open.
func TestSpecOpenFilesClosesOnError(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("boot"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, initrd := range []string{filepath.Join(dir, "none"), dir} {
		s := spec("closed")
		s.Kernel, s.Initrd = kernel, initrd
		boot, err := s.openFiles()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "initrd_path: ") {
			t.Fatalf("initrd %s: %v, want invalid argument naming initrd_path", initrd, err)
		}
		if boot.kernel != nil || boot.initrd != nil {
			t.Errorf("initrd %s refused with files", initrd)
		}
	}
	if isOpen(t, kernel) {
		t.Errorf("%s left open", kernel)
	}
}

// isOpen reports whether this process has a descriptor open on path.
func isOpen(t *testing.T, path string) bool {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	for _, e := range entries {
		if target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); target == path {
			return true
		}
	}
	return false
}
