package daemon

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
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
