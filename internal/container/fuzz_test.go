package container

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/names"
)

// FuzzSpec reads arbitrary bytes as a bundle's config.json, and an
// arbitrary word as a container id and a signal. A spec loadSpec accepts
// is OCI 1.x with a process that has arguments and an absolute working
// directory (a console size only with a terminal), a root that is a
// directory, and a cgroup path that is absolute and clean when set;
// libcontainer's conversion of it never panics. Every refusal is an
// invalid argument. An accepted id is one path element of [A-Za-z0-9_.-]
// that no command line takes for a flag; an accepted signal is 1 to 64.
func FuzzSpec(f *testing.F) {
	for _, s := range [][2]string{
		{`{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["/probe"], "cwd": "/"}}`, "c1"},
		{`{"ociVersion": "1.2.0", "root": {"path": "rootfs", "readonly": true}, "process": {"terminal": true, "consoleSize": {"height": 1, "width": 2}, "args": ["sh"], "cwd": "/"},
		  "linux": {"cgroupsPath": "/cabin/c1", "namespaces": [{"type": "pid"}, {"type": "mount"}], "seccomp": {}}}`, "KILL"},
		{`{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sh"], "cwd": "/"}, "linux": {"cgroupsPath": "rel/x"}}`, "9"},
		{`{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sh"], "cwd": "/"}, "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}}`, "SIGRTMIN+1"},
		{`{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sh"], "cwd": "rel", "consoleSize": {"height": 1}}}`, "-x"},
		{`{"ociVersion": "2.0", "root": {"path": "../../etc"}, "process": {"args": []}}`, "../x"},
		{`{"ociVersion": "1.0.2", "root": {"path": "/nonexistent"}, "process": {"args": ["x"], "cwd": "/"},
		  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, {"destination": "rel", "type": "bind", "source": "/"}]}`, "0"},
		{`{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["x"], "cwd": "/", "user": {"uid": 4294967295}},
		  "linux": {"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 0}], "devices": [{"path": "dev/x", "type": "q"}]}}`, "65"},
		{`null`, ""}, {`[]`, "a\x00"}, {`{"ociVersion": 1}`, "é"},
	} {
		f.Add([]byte(s[0]), s[1])
	}
	bundle := f.TempDir()
	if err := os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		f.Fatal(err)
	}
	// libcontainer's conversion resolves relative paths from the working
	// directory, which the runtime makes the bundle.
	f.Chdir(bundle)
	f.Fuzz(func(t *testing.T, config []byte, word string) {
		if err := os.WriteFile(filepath.Join(bundle, specFile), config, 0o644); err != nil {
			t.Fatal(err)
		}
		spec, err := loadSpec(bundle)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("loadSpec: %v, want an invalid argument", err)
			}
		} else {
			if major, _, _ := strings.Cut(spec.Version, "."); major != "1" {
				t.Fatalf("version %q accepted", spec.Version)
			}
			root := spec.Root.Path
			if !filepath.IsAbs(root) {
				root = filepath.Join(bundle, root)
			}
			if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
				t.Fatalf("root %q accepted: %v", spec.Root.Path, err)
			}
			p := spec.Process
			if len(p.Args) == 0 || !filepath.IsAbs(p.Cwd) || p.ConsoleSize != nil && !p.Terminal {
				t.Fatalf("process %+v accepted", p)
			}
			if l := spec.Linux; l != nil && l.CgroupsPath != "" {
				if !filepath.IsAbs(l.CgroupsPath) || filepath.Clean(l.CgroupsPath) != l.CgroupsPath || strings.ContainsRune(l.CgroupsPath, 0) {
					t.Fatalf("cgroup path %q accepted", l.CgroupsPath)
				}
			}
			if _, err := libcontainerConfig("fuzz", spec, true); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("libcontainerConfig: %v, want an invalid argument", err)
			}
		}

		if err := checkID(word); err == nil {
			if word == "" || len(word) > names.MaxContainer || word[0] == '.' || word[0] == '-' || filepath.Base(word) != word ||
				strings.Trim(word, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "" {
				t.Fatalf("container id %q accepted", word)
			}
		} else if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("checkID(%q): %v, want an invalid argument", word, err)
		}
		if sig, err := ParseSignal(word); err == nil {
			if sig < 1 || sig > 64 {
				t.Fatalf("signal %q accepted as %d", word, sig)
			}
		} else if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("ParseSignal(%q): %v, want an invalid argument", word, err)
		}
	})
}
