package kata

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// standInScript stands in for cabin-runtime where what is tested is how the
// agent runs it and reads its answer, not what a real runtime does: it
// answers by the contract's exit codes, as told by its arguments.
const standInScript = `#!/bin/sh
[ "$1" = --root ] || { echo "no --root" >&2; exit 2; }
root=$2; shift 2
case $1 in
ok) echo "out:$root"; exit 0 ;;
fd3) [ -e /proc/self/fd/3 ] && read line <&3 && echo "fd3:$line"; exit 0 ;;
fail) echo "libcontainer: some noise" >&2; echo "$3" >&2; exit "$2" ;;
die) kill -9 $$ ;;
*) echo "unknown verb $1" >&2; exit 2 ;;
esac
`

// standIn writes the stand-in runtime and returns its path.
func standIn(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cabin-runtime")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRuntimeRun(t *testing.T) {
	rt := &runtime{path: standIn(t, standInScript), root: "/some/root", reaper: startReaper(t), log: testLog()}
	out, err := rt.run([]string{"ok"}, nil)
	if err != nil || string(out) != "out:/some/root\n" {
		t.Errorf("ok: %q, %v", out, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.WriteString("hello\n")
	w.Close()
	if out, err := rt.run([]string{"fd3"}, []*os.File{r}); err != nil || string(out) != "fd3:hello\n" {
		t.Errorf("fd3: %q, %v", out, err)
	}
	for _, c := range []struct {
		code string
		want error
	}{
		{"2", errdefs.ErrInvalidArgument},
		{"3", errdefs.ErrNotFound},
		{"4", errdefs.ErrAlreadyExists},
		{"1", nil},
		{"7", nil},
	} {
		_, err := rt.run([]string{"fail", c.code, "the reason " + c.code}, nil)
		var re *RuntimeError
		if !errors.As(err, &re) || re.Message != "the reason "+c.code || re.Verb != "fail" {
			t.Errorf("exit %s: %v", c.code, err)
			continue
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("exit %s: %v, want %v", c.code, err, c.want)
		}
		for _, cat := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists} {
			if c.want == nil && errors.Is(err, cat) {
				t.Errorf("exit %s is %v", c.code, cat)
			}
		}
		if want := "cabin-runtime fail: the reason " + c.code; err.Error() != want {
			t.Errorf("message %q, want %q", err.Error(), want)
		}
	}
	_, err = rt.run([]string{"die"}, nil)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("killed runtime: %v", err)
	}
	missing := &runtime{path: "/nonexistent/cabin-runtime", root: "/r", reaper: rt.reaper, log: testLog()}
	if _, err := missing.run([]string{"ok"}, nil); err == nil {
		t.Error("a missing runtime ran")
	}
}
