package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// maxLogBytes is the most of a VM's console log Logs returns, as
// upstream's GetVmLogs does.
const maxLogBytes = 30 << 20

// Logs returns a VM's console log and its rotations, at most 30 MiB, newest
// last. The log of a stopped VM stays readable; a VM started again adds
// to it.
func (m *Manager) Logs(key Key) ([]byte, error) {
	b, _, err := m.LogTail(key, maxLogBytes)
	return b, err
}

// LogTail returns the newest maxBytes of a VM's console log (its rotated
// files, then the live one) and the size of all of it.
func (m *Manager) LogTail(key Key, maxBytes int64) ([]byte, int64, error) {
	dir, err := m.logDir(key)
	if err != nil {
		return nil, 0, err
	}
	return consolelog.Tail(consolelog.FilesOf(dir), maxBytes)
}

// LogOptions say what of a VM's console log OpenLog reads.
type LogOptions struct {
	// TailLines, when 0 or more, is how many of the last lines logged to
	// start with; all of the log when negative.
	TailLines int
	// Follow keeps reading what the VM writes next, until it stops; see
	// OpenLog.
	Follow bool
}

// LogReader reads a VM's console log; see OpenLog.
type LogReader struct {
	r    *consolelog.Reader
	m    *Manager
	quit chan struct{}
	once sync.Once
}

// OpenLog opens a VM's console log for reading from its oldest byte, or
// from the start of its last opts.TailLines lines. Following, the reader
// goes on with what the VM writes, across rotations, until the run under
// way when it opened ends: once the VM has stopped (its console is then
// all on disk), Read returns the rest and io.EOF. A VM that is not running
// has no run to follow: its reader ends at the end of its log.
func (m *Manager) OpenLog(key Key, opts LogOptions) (*LogReader, error) {
	dir, err := m.logDir(key)
	if err != nil {
		return nil, err
	}
	l := &LogReader{m: m, quit: make(chan struct{})}
	ro := consolelog.ReadOptions{TailLines: opts.TailLines, Follow: opts.Follow}
	if opts.Follow {
		ro.Ended = m.runEnded(key, l.quit)
	}
	r, err := consolelog.OpenReader(consolelog.FilesOf(dir), ro)
	if err != nil {
		l.Close()
		return nil, err
	}
	l.r = r
	return l, nil
}

// Read reads the next part of the log; see consolelog.Reader.Read. A
// follower whose daemon stops gets ErrUnavailable.
func (l *LogReader) Read(ctx context.Context, p []byte) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.m.ctx, cancel)()
	n, err := l.r.Read(ctx, p)
	if err != nil && l.m.ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return n, fmt.Errorf("cabind is stopping: %w", errdefs.ErrUnavailable)
	}
	return n, err
}

// Close releases the reader.
func (l *LogReader) Close() error {
	l.once.Do(func() { close(l.quit) })
	if l.r != nil {
		return l.r.Close()
	}
	return nil
}

// runEnded returns a channel closed once the run of the VM key under way
// now has ended and its console is all on disk (its resources, the
// console's copy among them, are released before it is marked stopped);
// already closed when none is under way. It stops watching when quit
// closes or the manager does.
func (m *Manager) runEnded(key Key, quit <-chan struct{}) <-chan struct{} {
	ended := make(chan struct{})
	v := m.lookup(key)
	if v == nil {
		close(ended)
		return ended
	}
	go func() {
		select {
		case <-v.launched:
			// A launch that failed never marks the VM stopped.
			if v.launchErr != nil {
				close(ended)
				return
			}
		case <-v.stopped:
			close(ended)
			return
		case <-quit:
			return
		case <-m.ctx.Done():
			return
		}
		select {
		case <-v.stopped:
			close(ended)
		case <-quit:
		case <-m.ctx.Done():
		}
	}()
	return ended
}

// logDir is the directory of the VM key, which must have one: a VM that
// runs, or ran and left its record.
func (m *Manager) logDir(key Key) (statedir.VMDir, error) {
	if err := key.Validate(); err != nil {
		return "", err
	}
	dir := m.opts.Root.VM(statedir.VMID(key.Owner, key.Name))
	if m.lookup(key) != nil {
		return dir, nil
	}
	if _, err := os.Stat(dir.Record()); err != nil {
		return "", errNoVM(key)
	}
	return dir, nil
}
