package daemonconf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// flags is a small stand-in for cabind's flag set.
type flags struct {
	set    *pflag.FlagSet
	net    string
	memory int
	debug  bool
}

func newFlags(t *testing.T, args ...string) *flags {
	t.Helper()
	f := &flags{set: pflag.NewFlagSet("cabind", pflag.ContinueOnError)}
	f.set.String("config", DefaultPath, "")
	f.set.StringVar(&f.net, "net", "auto", "")
	f.set.IntVar(&f.memory, "memory", 512, "")
	f.set.BoolVar(&f.debug, "debug", false, "")
	if err := f.set.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestApplyFileAndFlagsWin(t *testing.T) {
	f := newFlags(t, "--memory", "2048")
	set, err := ApplyBytes(f.set, "cabind.toml", []byte("# the host's settings\nnet = \"tap\"\nmemory = 1024\ndebug = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.net != "tap" || !f.debug {
		t.Errorf("net=%q debug=%v, want the file's tap and true", f.net, f.debug)
	}
	if f.memory != 2048 {
		t.Errorf("memory = %d, want the command line's 2048 over the file's", f.memory)
	}
	if want := []string{"debug", "net"}; !slices.Equal(set, want) {
		t.Errorf("set %q, want %q", set, want)
	}
}

func TestApplyRefusesAndChangesNothing(t *testing.T) {
	for name, tc := range map[string]struct{ file, want string }{
		"unknown key":       {"net = \"tap\"\nnetwork = \"tap\"\n", `unknown key "network"`},
		"not a file key":    {"net = \"tap\"\nversion = true\n", `unknown key "version"`},
		"a table":           {"net = \"tap\"\n[memory]\nsize = 1\n", `key "memory"`},
		"an array":          {"net = \"tap\"\nmemory = [1, 2]\n", `key "memory": want a string`},
		"a float":           {"memory = 1.5\nnet = \"tap\"\n", `key "memory": want a string`},
		"a bad value":       {"net = \"tap\"\nmemory = \"lots\"\n", `key "memory"`},
		"not toml":          {"net = tap\n", "cabind.toml"},
		"a duplicate key":   {"net = \"tap\"\nnet = \"user\"\n", "cabind.toml"},
		"a value too large": {"net = \"tap\"\nmemory = 99999999999999999999\n", "cabind.toml"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFlags(t)
			_, err := ApplyBytes(f.set, "cabind.toml", []byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("err = %v, want ErrInvalidArgument", err)
			}
			if f.net != "auto" || f.memory != 512 || f.set.Changed("net") {
				t.Errorf("a refused file changed net=%q memory=%d", f.net, f.memory)
			}
		})
	}
}

func TestApplyFile(t *testing.T) {
	dir := t.TempDir()
	f := newFlags(t)
	if set, err := Apply(f.set, filepath.Join(dir, "missing.toml"), false); err != nil || set != nil {
		t.Errorf("missing default file: set %q, err %v; want nothing and no error", set, err)
	}
	if _, err := Apply(f.set, filepath.Join(dir, "missing.toml"), true); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing named file: err %v, want ErrNotExist", err)
	}
	if _, err := Apply(f.set, dir, true); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: err %v, want not a regular file", err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxSize)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(f.set, big, true); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a huge file: err %v, want refused for its size", err)
	}
	p := filepath.Join(dir, "cabind.toml")
	if err := os.WriteFile(p, []byte("net = \"user\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(f.set, p, true); err != nil || f.net != "user" {
		t.Errorf("net = %q, err %v; want user from the file", f.net, err)
	}
	empty := filepath.Join(dir, "empty.toml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if set, err := Apply(f.set, empty, true); err != nil || len(set) != 0 {
		t.Errorf("empty file: set %q, err %v", set, err)
	}
}

// FuzzApply feeds arbitrary bytes as the file: never a panic, and a file
// refused changes no flag.
func FuzzApply(f *testing.F) {
	f.Add([]byte("net = \"tap\"\nmemory = 1024\n"))
	f.Add([]byte("[a]\nb = 1\n"))
	f.Add([]byte("memory = 0x10\ndebug = false\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl := newFlags(t)
		set, err := ApplyBytes(fl.set, "fuzz.toml", data)
		if err != nil && (len(set) != 0 || fl.net != "auto" || fl.memory != 512 || fl.debug) {
			t.Errorf("refused file %q changed flags", data)
		}
	})
}
