package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
	"github.com/cabinvm/cabin/internal/statedir/statedirtest"
)

func TestOneDaemonPerStateDir(t *testing.T) {
	root := statedirtest.New(t)
	ctx := context.Background()
	unlock, err := lockStateDir(ctx, root, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(ctx, root, 100*time.Millisecond, nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second lock: %v", err)
	}
	// A cabind starting while the last one exits waits for it.
	time.AfterFunc(200*time.Millisecond, unlock)
	unlock2, err := lockStateDir(ctx, root, time.Minute, nil)
	if err != nil {
		t.Fatalf("lock while the holder lets go: %v", err)
	}
	unlock2()
}

// cabind refuses a state dir others could change under it, before it
// writes anything there.
func TestRunRefusesAnUnsafeStateDir(t *testing.T) {
	for _, c := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
	}{
		{"writable by others", func(t *testing.T, dir string) { os.Chmod(dir, 0o777) }},
		{"a link planted as image", func(t *testing.T, dir string) {
			os.Symlink(t.TempDir(), filepath.Join(dir, "image"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := statedirtest.New(t).Dir()
			os.Chmod(dir, 0o700)
			c.spoil(t, dir)
			cfg := Config{
				Socket:   filepath.Join(dir, "s.sock"),
				StateDir: dir,
				Log:      slog.New(slog.DiscardHandler),
			}
			err := Run(context.Background(), cfg)
			if !errors.Is(err, statedir.ErrUnsafe) {
				t.Fatalf("Run = %v, want ErrUnsafe", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "cabind.lock")); !os.IsNotExist(err) {
				t.Errorf("cabind wrote its lock file in the refused state dir: %v", err)
			}
		})
	}
}
