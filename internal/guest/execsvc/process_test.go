package execsvc

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/reaper"
)

// TestChunksAreLentUntilReleased holds every chunk of output unreleased
// while more arrives: none may be overwritten by a later read. Then it
// releases them, and a new process's output reuses the buffers intact.
func TestChunksAreLentUntilReleased(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := reaper.New(false, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	run := func() []Chunk {
		p, err := Start(r, Spec{Argv: []string{"sh", "-c", "for w in one two three four; do printf $w; sleep 0.05; done"}}, log, nil)
		if err != nil {
			t.Fatal(err)
		}
		var got []Chunk
		for c := range p.Output() {
			got = append(got, c)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if _, err := p.Wait(wctx); err != nil {
			t.Fatal(err)
		}
		return got
	}
	check := func(got []Chunk) {
		t.Helper()
		var all string
		for _, c := range got {
			all += string(c.Data)
		}
		if all != "onetwothreefour" {
			t.Errorf("output held unreleased reads back as %q", all)
		}
		if len(got) < 2 {
			t.Errorf("%d chunks; the test needs several reads", len(got))
		}
	}
	first := run()
	check(first)
	for _, c := range first {
		c.Release()
	}
	check(run())
}
