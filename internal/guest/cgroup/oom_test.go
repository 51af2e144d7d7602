package cgroup

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestOOMWatcher: a growing oom_kill count is told, under each key of its
// cgroup; other changes to memory.events, and removed keys, are not.
func TestOOMWatcher(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	events := func(dir, content string) { write(t, filepath.Join(dir, memoryEvents), content) }
	events(a, "max 0\noom 0\noom_kill 2\n")
	events(b, "max 0\noom 0\noom_kill 0\n")
	got := make(chan string, 10)
	w, err := NewOOMWatcher(func(key string) { got <- key })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for key, dir := range map[string]string{"a": a, "a2": a, "b": b} {
		if err := w.Add(key, dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Add("b", b); err == nil {
		t.Error("second Add of a key: no error")
	}
	if err := w.Add("c", filepath.Join(root, "none")); err == nil {
		t.Error("Add of a cgroup without memory.events: no error")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	next := func() string {
		t.Helper()
		select {
		case k := <-got:
			return k
		case <-ctx.Done():
			t.Fatal("no notification")
			return ""
		}
	}

	// Hitting the limit without a kill says nothing; a kill in b does.
	events(a, "max 9\noom 0\noom_kill 2\n")
	events(b, "max 1\noom 1\noom_kill 1\n")
	if k := next(); k != "b" {
		t.Errorf("notified %q, want b", k)
	}
	w.Remove("a2")
	w.Remove("nothing")
	events(a, "max 9\noom 1\noom_kill 3\n")
	if k := next(); k != "a" {
		t.Errorf("notified %q, want a (a2 is removed)", k)
	}
	w.Remove("a")
	events(a, "max 9\noom 1\noom_kill 4\n")
	events(b, "max 1\noom 1\noom_kill 2\n")
	if k := next(); k != "b" {
		t.Errorf("notified %q, want b (a is not watched)", k)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case k := <-got:
		t.Errorf("notified %q after the last kill", k)
	default:
	}
	_ = os.Remove(a)
}
