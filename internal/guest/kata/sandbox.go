package kata

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Sandbox is the guest's containers and the storages they use: Kata's
// sandbox, of which an agent has one. CreateSandbox need not come first;
// it only sets the hostname and mounts storages the sandbox holds.
type Sandbox struct {
	cfg    Config
	log    *slog.Logger
	rt     *runtime
	mounts *mounts

	mu         sync.Mutex
	containers map[string]*container
	// shared is what CreateSandbox set up; nil before.
	shared *shared
	// execSeq numbers exec'd processes' files in their bundles.
	execSeq uint64

	// copies are CopyFile's uploads in progress (copyfile.go).
	copies copies

	// cg is the containers' cgroups and their OOM events (cgroups.go).
	cg cgroups
	// metrics is the calls and scrapes counted for GetMetrics
	// (metrics.go).
	metrics metrics
}

// shared is what CreateSandbox set up.
type shared struct {
	id       string
	storages []string // the mount points it holds
	// ready is set once CreateSandbox is done.
	ready bool
}

// SandboxConfig is what CreateSandbox asks for.
type SandboxConfig struct {
	ID       string
	Hostname string
	Storages []Storage
}

// New returns the sandbox; it touches nothing until asked to.
func New(cfg Config) *Sandbox {
	cfg = cfg.withDefaults()
	return &Sandbox{
		cfg:        cfg,
		log:        cfg.Log,
		rt:         &runtime{path: cfg.Runtime, root: cfg.RuntimeRoot, reaper: cfg.Reaper, log: cfg.Log, wait: cfg.WaitShare},
		mounts:     newMounts(cfg.Log, []string{cfg.RuntimeRoot, cfg.Bundles}, cfg.WaitModules).withShare(cfg.WaitShare),
		containers: map[string]*container{},
	}
}

// CreateSandbox mounts the sandbox's storages and sets the hostname.
func (s *Sandbox) CreateSandbox(ctx context.Context, c SandboxConfig) error {
	if c.ID != "" {
		if err := checkID("sandbox_id", c.ID); err != nil {
			return err
		}
	}
	if c.Hostname != "" {
		if err := checkHostname("hostname", c.Hostname); err != nil {
			return err
		}
	}
	if err := s.mounts.check("storages", c.Storages); err != nil {
		return err
	}
	s.mu.Lock()
	if s.shared != nil {
		s.mu.Unlock()
		return fmt.Errorf("sandbox: %w", errdefs.ErrAlreadyExists)
	}
	sb := &shared{id: c.ID}
	s.shared = sb
	s.mu.Unlock()
	undo := func() {
		s.mu.Lock()
		s.shared = nil
		s.mu.Unlock()
	}
	points, err := s.mounts.acquire(ctx, "storages", c.Storages)
	if err != nil {
		undo()
		return err
	}
	if c.Hostname != "" {
		if err := s.cfg.SetHostname(c.Hostname); err != nil {
			if _, rerr := s.mounts.release(points); rerr != nil {
				s.log.Warn("undo sandbox storages", "err", rerr)
			}
			undo()
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	s.mu.Lock()
	sb.storages, sb.ready = points, true
	s.mu.Unlock()
	s.log.Info("sandbox created", "id", c.ID, "hostname", c.Hostname, "storages", len(points))
	return nil
}

// DestroySandbox removes every container, waiting for their processes
// (bounded by ctx only), and releases the sandbox's storages.
func (s *Sandbox) DestroySandbox(ctx context.Context) error {
	s.mu.Lock()
	var ids []string
	for id, c := range s.containers {
		if c.state != creating {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := s.Remove(ctx, id, 0); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	s.mu.Lock()
	sb := s.shared
	if sb == nil || !sb.ready {
		// None, or one still being created: its CreateSandbox undoes
		// itself if it fails.
		s.mu.Unlock()
		return nil
	}
	s.shared = nil
	s.mu.Unlock()
	if failed, err := s.mounts.release(sb.storages); err != nil {
		// Kept, for another DestroySandbox to try again.
		s.mu.Lock()
		sb.storages = failed
		if s.shared == nil {
			s.shared = sb
		}
		s.mu.Unlock()
		return err
	}
	s.log.Info("sandbox destroyed", "id", sb.id)
	return nil
}

// checkHostname checks a hostname: at most 64 bytes (HOST_NAME_MAX), of
// dot-separated labels of letters, digits and '-', not starting or ending
// with '-' (RFC 1123).
func checkHostname(field, name string) error {
	if len(name) > 64 {
		return errdefs.InvalidArgument(field, fmt.Sprintf("%d bytes; at most 64", len(name)))
	}
	for _, label := range strings.Split(name, ".") {
		ok := label != "" && len(label) <= 63 && label[0] != '-' && label[len(label)-1] != '-'
		for i := 0; ok && i < len(label); i++ {
			c := label[i]
			ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
		}
		if !ok {
			return errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a hostname", name))
		}
	}
	return nil
}
