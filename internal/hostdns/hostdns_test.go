package hostdns

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	// Replaced by rename, as resolvconf and NetworkManager do.
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	write(t, path, "# comment\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 2001:db8::53\n"+
		"nameserver garbage\nsearch a.example b.example\noptions edns0\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n")
	c, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Nameservers: []string{"192.0.2.53", "2001:db8::53", "192.0.2.54"}, SearchDomains: []string{"a.example", "b.example"}}
	if !c.Equal(want) {
		t.Errorf("Read = %+v, want %+v (no loopback, no garbage, at most three)", c, want)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing file read")
	}
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	write(t, path, "nameserver 192.0.2.53\n")
	first, _ := Read(path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Config, 4)
	if err := Watch(ctx, path, first, func(c Config) { got <- c }, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	write(t, path, "nameserver 192.0.2.54\nsearch example.test\n")
	select {
	case c := <-got:
		if c.Nameservers[0] != "192.0.2.54" || c.SearchDomains[0] != "example.test" {
			t.Errorf("changed to %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change seen")
	}
	// Rewritten the same: no call.
	write(t, path, "nameserver 192.0.2.54\nsearch example.test\n")
	select {
	case c := <-got:
		t.Errorf("called for settings that did not change: %+v", c)
	case <-time.After(500 * time.Millisecond):
	}
}
