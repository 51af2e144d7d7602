package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCheck(t *testing.T) {
	fresh := func(t *testing.T) Root {
		t.Helper()
		r, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(r.Dir(), 0o700); err != nil {
			t.Fatal(err)
		}
		return r
	}
	uid := os.Geteuid()
	if err := fresh(t).Check(uid); err != nil {
		t.Errorf("a fresh state dir: %v", err)
	}
	for _, c := range []struct {
		name  string
		spoil func(t *testing.T, r Root)
	}{
		{"others may write", func(t *testing.T, r Root) { os.Chmod(r.Dir(), 0o777) }},
		{"its group may write", func(t *testing.T, r Root) { os.Chmod(r.Dir(), 0o770) }},
		{"a link planted as image", func(t *testing.T, r Root) { os.Symlink(t.TempDir(), r.ImageDir()) }},
		{"a link planted as the downloads", func(t *testing.T, r Root) {
			os.Mkdir(r.ImageDir(), 0o700)
			os.Symlink("/tmp", r.DownloadsDir())
		}},
		{"a link planted as a VM's directory", func(t *testing.T, r Root) {
			os.Mkdir(r.VMsDir(), 0o700)
			os.Symlink(t.TempDir(), r.VM("0123456789abcdef").Path())
		}},
		{"a link planted as a VM's record", func(t *testing.T, r Root) {
			os.MkdirAll(r.VM("0123456789abcdef").Path(), 0o700)
			os.Symlink("/etc/passwd", r.VM("0123456789abcdef").Record())
		}},
		{"a link planted as a VM's read-ahead spools", func(t *testing.T, r Root) {
			os.MkdirAll(r.VM("0123456789abcdef").Path(), 0o700)
			os.Symlink(t.TempDir(), r.VM("0123456789abcdef").ReadAheadDir())
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := fresh(t)
			c.spoil(t, r)
			if err := r.Check(uid); !errors.Is(err, ErrUnsafe) {
				t.Errorf("Check = %v, want ErrUnsafe", err)
			}
		})
	}
	t.Run("another owner", func(t *testing.T) {
		if err := fresh(t).Check(uid + 1); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Check of a dir another uid owns = %v, want ErrUnsafe", err)
		}
	})
	t.Run("the state dir a link", func(t *testing.T) {
		target := fresh(t)
		link := filepath.Join(t.TempDir(), "state")
		os.Symlink(target.Dir(), link)
		r, _ := New(link)
		if err := r.Check(uid); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Check of a link = %v, want ErrUnsafe", err)
		}
	})
}
