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
			err := s.validate(host, 256)
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
	if err := s.validate(Host{CPUs: 4, MemoryMiB: 4096}, 256); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "vmlinux"); s.Kernel != want {
		t.Errorf("Kernel = %q, want %q", s.Kernel, want)
	}
	if want := filepath.Join(dir, "initrd.img"); s.Initrd != want {
		t.Errorf("Initrd = %q, want %q", s.Initrd, want)
	}
}
