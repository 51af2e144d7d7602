package guestinit

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// The host has no virtio-9p device: mounting the share fails, and the
// error says what is missing, with the category callers pass on.
func TestMountShareFails(t *testing.T) {
	target := t.TempDir() + "/share"
	err := MountShare(bootcfg.RootfsTag, target)
	if err == nil {
		t.Fatal("mounted a 9p share on a host without one")
	}
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), bootcfg.RootfsTag) {
		t.Errorf("MountShare: %v; want FailedPrecondition naming the tag", err)
	}
	t.Logf("MountShare on the host: %v", err)
}

// Share.Wait returns the outcome once set, or ctx's end; it hurries the
// background work without waiting for all of it.
func TestShareWait(t *testing.T) {
	bg := NewBackground()
	s := NewShare(bg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait before the share: %v", err)
	}
	if !bg.urgent {
		t.Error("Wait did not hurry the background work")
	}
	release := make(chan struct{})
	bg.Start(func() error {
		s.Set(errdefs.Errorf(errdefs.ErrFailedPrecondition, "no share"))
		<-release // the late modules, still loading
		return nil
	})
	if err := s.Wait(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Wait: %v, want the share's error", err)
	}
	close(release)
	if err := bg.Wait(context.Background()); err != nil {
		t.Errorf("background: %v", err)
	}
	ok := NewShare(NewBackground())
	ok.Set(nil)
	if err := ok.Wait(context.Background()); err != nil {
		t.Errorf("Wait on a mounted share: %v", err)
	}
}
