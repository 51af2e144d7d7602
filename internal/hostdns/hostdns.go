// Package hostdns reads the host's DNS settings for guests, and follows
// them as they change: a guest resolves names as its host does.
package hostdns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ResolvConf is the host's resolver configuration.
const ResolvConf = "/etc/resolv.conf"

// stubServers is where systemd-resolved keeps the servers its loopback
// stub (127.0.0.53) forwards to: what a guest, which cannot reach the
// host's loopback, must be given instead.
const stubServers = "/run/systemd/resolve/resolv.conf"

// Config is what a resolv.conf says that a guest needs.
type Config struct {
	Nameservers   []string
	SearchDomains []string
}

// Equal tells whether c and o say the same.
func (c Config) Equal(o Config) bool {
	return slices.Equal(c.Nameservers, o.Nameservers) && slices.Equal(c.SearchDomains, o.SearchDomains)
}

// Read reads the resolv.conf at path. Loopback nameservers, which only the
// host can reach, are left out; when that leaves none and systemd-resolved's
// list of the servers it forwards to exists, those are read instead.
func Read(path string) (Config, error) {
	c, err := parse(path)
	if err != nil {
		return Config{}, err
	}
	if len(c.Nameservers) == 0 && path == ResolvConf {
		if upstream, err := parse(stubServers); err == nil && len(upstream.Nameservers) > 0 {
			upstream.SearchDomains = c.SearchDomains
			return upstream, nil
		}
	}
	return c, nil
}

// maxNameservers is how many nameservers the resolver uses (MAXNS).
const maxNameservers = 3

func parse(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("host dns: %w", err)
	}
	defer f.Close()
	var c Config
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			a, err := netip.ParseAddr(fields[1])
			if err != nil || a.IsLoopback() || a.IsUnspecified() || len(c.Nameservers) == maxNameservers {
				continue
			}
			c.Nameservers = append(c.Nameservers, a.String())
		case "search", "domain":
			// The last of them wins, as in the resolver.
			c.SearchDomains = slices.Clone(fields[1:])
		}
	}
	if err := s.Err(); err != nil {
		return Config{}, fmt.Errorf("host dns: %s: %w", path, err)
	}
	return c, nil
}

// settle is how long Watch waits for a burst of changes to end: a
// resolv.conf is often replaced in several steps.
const settle = 100 * time.Millisecond

// Watch calls changed with the settings of path each time they change,
// until ctx ends. It follows the file through replacements by rename and
// through a symbolic link (as /etc/resolv.conf often is), watching the
// directories that hold them. It returns an error only when it cannot
// watch at all.
func Watch(ctx context.Context, path string, last Config, changed func(Config), log *slog.Logger) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("host dns: watch: %w", err)
	}
	dirs := map[string]bool{filepath.Dir(path): true}
	if target, err := filepath.EvalSymlinks(path); err == nil {
		dirs[filepath.Dir(target)] = true
	}
	if path == ResolvConf {
		dirs[filepath.Dir(stubServers)] = true
	}
	watched := 0
	for d := range dirs {
		if err := w.Add(d); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				log.Warn("host dns: cannot watch a directory", "dir", d, "err", err)
			}
			continue
		}
		watched++
	}
	if watched == 0 {
		w.Close()
		return fmt.Errorf("host dns: nothing to watch for %s", path)
	}
	go func() {
		defer w.Close()
		var timer <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("host dns: watch", "err", err)
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				timer = time.After(settle)
			case <-timer:
				timer = nil
				c, err := Read(path)
				if err != nil {
					log.Warn("host dns: read", "err", err)
					continue
				}
				if !c.Equal(last) {
					last = c
					changed(c)
				}
			}
		}
	}()
	return nil
}
