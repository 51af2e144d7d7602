package kata

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Remove kills the container's processes, waits for them (timeout 0:
// forever, but for ctx), and deletes it, its bundle and its hold on its
// storages. When the wait times out, the container stays.
func (s *Sandbox) Remove(ctx context.Context, id string, timeout time.Duration) error {
	c, err := s.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	s.mu.Lock()
	c.removing = true
	procs := []*process{c.init}
	for _, p := range c.procs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	kept := true
	defer func() {
		if kept {
			s.mu.Lock()
			c.removing = false
			s.mu.Unlock()
		}
	}()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := s.killAll(id, procs); err != nil {
		return err
	}
	for _, p := range procs {
		if _, err := p.wait(ctx); err != nil {
			return fmt.Errorf("container %q: pid %d still runs after SIGKILL: %w", id, p.pid, err)
		}
	}
	if _, err := s.rt.run([]string{"delete", "--force", id}, nil); err != nil && !isNotFound(err) {
		return err
	}
	kept = false
	s.mu.Lock()
	delete(s.containers, id)
	c.init.release()
	for _, p := range c.procs {
		p.release()
	}
	points := c.storages
	s.mu.Unlock()
	s.cgroupRemoved(id)
	if err := os.RemoveAll(c.bundle); err != nil {
		s.log.Warn("remove bundle", "container", id, "err", err)
	}
	if _, err := s.mounts.release(points); err != nil {
		return fmt.Errorf("container %q removed, but not its storages: %w", id, err)
	}
	s.log.Info("container removed", "id", id)
	return nil
}

// killAll sends SIGKILL to every process of the container, unless all
// those the agent knows have exited already.
func (s *Sandbox) killAll(id string, procs []*process) error {
	for _, p := range procs {
		if !p.exited() {
			_, err := s.rt.run([]string{"kill", "--all", id, "KILL"}, nil)
			if err != nil && !isNotFound(err) {
				return err
			}
			return nil
		}
	}
	return nil
}
