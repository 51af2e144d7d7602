package qemu

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestExpiredContextLeavesMonitorUsable: a call whose context has already
// ended sends nothing and fails; the monitor stays usable for the next
// call (before, the failed write closed the connection for everyone).
func TestExpiredContextLeavesMonitorUsable(t *testing.T) {
	c := connect(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		if r.Execute != "after" {
			t.Errorf("first command the monitor saw: %q, want after", r.Execute)
		}
		return f.reply(r, `{"ok": true}`)
	})
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := c.Execute(ctx, "expired", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	var got struct{ OK bool }
	if err := c.Execute(testContext(t), "after", nil, &got); err != nil || !got.OK {
		t.Fatalf("the next call: %+v, %v", got, err)
	}
}
