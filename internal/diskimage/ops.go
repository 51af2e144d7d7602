package diskimage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Status is the state or outcome of an operation, as concierge's
// DiskImageStatus numbers them.
type Status int

const (
	StatusUnknown Status = iota
	StatusCreated
	StatusExists
	StatusFailed
	StatusDoesNotExist
	StatusDestroyed
	StatusInProgress
	StatusResized
	StatusNotEnoughSpace
	StatusBadImage
)

// StatusOf is the status an operation that ended with err ends in.
func StatusOf(err error) Status {
	switch {
	case errors.Is(err, ErrNotEnoughSpace):
		return StatusNotEnoughSpace
	case errors.Is(err, ErrBadImage):
		return StatusBadImage
	case errors.Is(err, errdefs.ErrAlreadyExists):
		return StatusExists
	case errors.Is(err, errdefs.ErrNotFound):
		return StatusDoesNotExist
	}
	return StatusFailed
}

// OpKind says what an operation does.
type OpKind string

const (
	OpResize OpKind = "resize"
	OpExport OpKind = "export"
	OpImport OpKind = "import"
)

// Progress is an operation's state, sent to subscribers as it changes.
type Progress struct {
	UUID    string
	Kind    OpKind
	Key     Key
	Status  Status
	Percent uint32
	// Reason says why it failed.
	Reason string
	// Digest is the hex SHA-256 of what an export wrote or an import
	// read, when asked for, once it succeeded.
	Digest string
	Time   time.Time
}

// Op is one operation under way or finished.
type Op struct {
	s      *Store
	uuid   string
	kind   OpKind
	key    Key
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	status   Status
	percent  uint32
	reason   string
	digest   string
	started  time.Time
	ended    time.Time
	partial  *partialFile
	finished bool
	// cancelled is set by Cancel, so that the failure says so.
	cancelled bool
}

// UUID is the operation's command uuid.
func (o *Op) UUID() string { return o.uuid }

// Key is the image the operation is on.
func (o *Op) Key() Key { return o.key }

// Done is closed once the operation has ended and cleaned up.
func (o *Op) Done() <-chan struct{} { return o.done }

// Progress is the operation's state now.
func (o *Op) Progress() Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.progressLocked()
}

func (o *Op) progressLocked() Progress {
	t := o.ended
	if t.IsZero() {
		t = time.Now()
	}
	return Progress{UUID: o.uuid, Kind: o.kind, Key: o.key, Status: o.status, Percent: o.percent, Reason: o.reason, Digest: o.digest, Time: t}
}

// record is an operation's on-disk record.
type record struct {
	UUID    string    `json:"uuid"`
	Kind    OpKind    `json:"kind"`
	Owner   string    `json:"owner"`
	Name    string    `json:"name"`
	Status  Status    `json:"status"`
	Percent uint32    `json:"percent"`
	Reason  string    `json:"reason,omitempty"`
	Digest  string    `json:"digest,omitempty"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Partial is a file outside the state dir the operation created and
	// must remove unless it completes (an export's destination).
	Partial *partialFile `json:"partial,omitempty"`
}

// partialFile names a file by its directory, name and inode, so that
// only that very file is removed, whatever the path leads to later.
type partialFile struct {
	Dir  string `json:"dir"`
	Name string `json:"name"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// validUUID tells a command uuid as cabin makes them: lower-case hex in
// groups of 8-4-4-4-12. Only such a string names a record file.
func validUUID(u string) bool {
	if len(u) != 36 {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// begin registers an operation of kind on key, taking the image for it.
// check runs under the store's lock with whether a VM holds the image,
// and may refuse. The operation's context ends when parent does, when it
// is cancelled, and when the store closes.
func (s *Store) begin(parent context.Context, kind OpKind, key Key, check func(held bool) error) (*Op, context.Context, error) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(s.ctx, cancel)
	op := &Op{
		s: s, uuid: newUUID(), kind: kind, key: key, done: make(chan struct{}),
		status: StatusInProgress, started: time.Now(),
		cancel: func() { stop(); cancel() },
	}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		op.cancel()
		return nil, nil, fmt.Errorf("disk images: cabind is stopping: %w", errdefs.ErrUnavailable)
	}
	if s.busy[key] != nil {
		s.mu.Unlock()
		op.cancel()
		return nil, nil, busy(key)
	}
	if check != nil {
		if err := check(s.held[key] > 0); err != nil {
			s.mu.Unlock()
			op.cancel()
			return nil, nil, err
		}
	}
	s.busy[key] = op
	s.ops[op.uuid] = op
	s.wg.Add(1)
	s.mu.Unlock()
	if err := s.writeRecord(op); err != nil {
		op.finish(err)
		return nil, nil, err
	}
	s.log.Info("disk operation started", "command_uuid", op.uuid, "kind", kind, "image", key.String())
	s.publish(op.Progress())
	return op, ctx, nil
}

// setPartial records a file outside the state dir that the operation
// made and removes unless it completes.
func (o *Op) setPartial(p *partialFile) error {
	o.mu.Lock()
	o.partial = p
	o.mu.Unlock()
	return o.s.writeRecord(o)
}

// setDigest keeps the digest of what the operation copied.
func (o *Op) setDigest(d string) {
	o.mu.Lock()
	o.digest = d
	o.mu.Unlock()
}

// setPercent updates the progress, publishing it when it changed.
func (o *Op) setPercent(p uint32) {
	p = min(p, 99) // 100 is for the end
	o.mu.Lock()
	if o.finished || p <= o.percent {
		o.mu.Unlock()
		return
	}
	o.percent = p
	pr := o.progressLocked()
	o.mu.Unlock()
	o.s.publish(pr)
}

// finish ends the operation with err (nil: success, in the status of its
// kind), frees its image, records and publishes the outcome.
func (o *Op) finish(err error) {
	o.mu.Lock()
	if o.finished {
		o.mu.Unlock()
		return
	}
	o.finished = true
	o.ended = time.Now()
	switch {
	case err == nil:
		o.percent = 100
		o.status = StatusCreated
		if o.kind == OpResize {
			o.status = StatusResized
		}
	case o.cancelled || errors.Is(err, ErrCancelled):
		o.status = StatusFailed
		o.reason = "cancelled"
	default:
		o.status = StatusOf(err)
		o.reason = err.Error()
	}
	o.partial = nil
	pr := o.progressLocked()
	o.mu.Unlock()
	o.cancel()
	s := o.s
	if rerr := s.writeRecord(o); rerr != nil {
		s.log.Warn("disk operation: write record", "command_uuid", o.uuid, "err", rerr)
	}
	s.mu.Lock()
	if s.busy[o.key] == o {
		delete(s.busy, o.key)
	}
	s.mu.Unlock()
	s.log.Info("disk operation ended", "command_uuid", o.uuid, "kind", o.kind, "image", o.key.String(), "status", pr.Status, "reason", pr.Reason)
	s.publish(pr)
	close(o.done)
	s.wg.Done()
}

// writeRecord writes op's record whole: a new file renamed over the old.
func (s *Store) writeRecord(o *Op) error {
	o.mu.Lock()
	r := record{
		UUID: o.uuid, Kind: o.kind, Owner: o.key.Owner, Name: o.key.Name, Status: o.status, Percent: o.percent,
		Reason: o.reason, Digest: o.digest, Started: o.started, Ended: o.ended, Partial: o.partial,
	}
	o.mu.Unlock()
	return s.writeRecordFile(r)
}

func (s *Store) writeRecordFile(r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := s.opts.Root.DiskOpTemp(r.UUID)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("disk operation record: %w", err)
	}
	if err := os.Rename(tmp, s.opts.Root.DiskOp(r.UUID)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("disk operation record: %w", err)
	}
	return nil
}

// Lookup returns the operation with the command uuid, under way or
// finished within KeepFinished, if see allows its owner. Operations of
// owners the caller may not see are not found, as are unknown ones.
func (s *Store) Lookup(uuid string, see func(owner string) bool) (*Op, error) {
	if !validUUID(uuid) {
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "command_uuid %q: no such disk operation", uuid)
	}
	s.prune()
	s.mu.Lock()
	op := s.ops[uuid]
	s.mu.Unlock()
	if op == nil || (see != nil && !see(op.key.Owner)) {
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "command_uuid %q: no such disk operation", uuid)
	}
	return op, nil
}

// Cancel cancels the operation and waits (until ctx ends) for it to have
// cleaned up. An operation already ended is ErrFailedPrecondition.
func (o *Op) Cancel(ctx context.Context) error {
	o.mu.Lock()
	if o.finished {
		o.mu.Unlock()
		return errdefs.Errorf(errdefs.ErrFailedPrecondition, "command_uuid %s: the operation has already ended", o.uuid)
	}
	o.cancelled = true
	o.mu.Unlock()
	o.cancel()
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// prune forgets finished operations older than KeepFinished.
func (s *Store) prune() {
	cutoff := time.Now().Add(-s.opts.KeepFinished)
	var old []string
	s.mu.Lock()
	for u, op := range s.ops {
		op.mu.Lock()
		if op.finished && op.ended.Before(cutoff) {
			old = append(old, u)
			delete(s.ops, u)
		}
		op.mu.Unlock()
	}
	s.mu.Unlock()
	for _, u := range old {
		os.Remove(s.opts.Root.DiskOp(u))
	}
}

// Subscribe streams the progress of every operation from now on. A
// subscriber more than its buffer behind is dropped: its channel closed.
func (s *Store) Subscribe() (<-chan Progress, func()) {
	ch := make(chan Progress, 256)
	s.mu.Lock()
	s.subs[ch] = Key{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
	}
}

func (s *Store) publish(p Progress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- p:
		default:
			delete(s.subs, ch)
			close(ch)
		}
	}
}

// Recover runs at start-up, before any operation: it removes the
// temporaries an earlier cabind left (no operation is under way yet),
// marks failed the operations it recorded as under way, removing the
// partial files they made outside the state dir, and remembers the
// finished ones for DiskImageStatus.
func (s *Store) Recover() error {
	root := s.opts.Root
	owners, err := os.ReadDir(root.DisksDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disk images: %w", err)
	}
	for _, o := range owners {
		if !o.IsDir() || o.Name() == filepath.Base(root.DiskOpsDir()) {
			continue
		}
		for _, loc := range Locations {
			d := root.DiskDir(o.Name(), loc.dir())
			entries, err := os.ReadDir(d.Path())
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("disk images: %w", err)
			}
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), statedir.TempSuffix) && e.Type().IsRegular() {
					p := filepath.Join(d.Path(), e.Name())
					s.log.Info("removing a disk operation's temporary left by an earlier cabind", "path", p)
					if err := os.Remove(p); err != nil {
						return fmt.Errorf("disk images: %w", err)
					}
				}
			}
		}
	}
	entries, err := os.ReadDir(root.DiskOpsDir())
	if err != nil {
		return fmt.Errorf("disk images: %w", err)
	}
	cutoff := time.Now().Add(-s.opts.KeepFinished)
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(root.DiskOpsDir(), name)
		if strings.HasSuffix(name, statedir.TempSuffix) {
			os.Remove(p)
			continue
		}
		uuid, ok := strings.CutSuffix(name, ".json")
		if !ok || !validUUID(uuid) {
			continue
		}
		b, err := os.ReadFile(p)
		var r record
		if err == nil {
			r, err = parseRecord(b, uuid)
		}
		if err != nil {
			s.log.Warn("disk operation record unreadable; removed", "path", p, "err", err)
			os.Remove(p)
			continue
		}
		if r.Status == StatusInProgress {
			if r.Partial != nil {
				if err := removePartial(r.Partial); err != nil {
					s.log.Warn("disk operation: remove partial file", "command_uuid", uuid, "err", err)
				}
			}
			r.Status, r.Reason, r.Ended, r.Partial = StatusFailed, "cabind stopped during the operation", time.Now(), nil
			if err := s.writeRecordFile(r); err != nil {
				return err
			}
			s.log.Info("disk operation cut short by an earlier cabind marked failed", "command_uuid", uuid, "kind", r.Kind)
		}
		if r.Ended.Before(cutoff) {
			os.Remove(p)
			continue
		}
		op := &Op{
			s: s, uuid: uuid, kind: r.Kind, key: Key{Owner: r.Owner, Name: r.Name}, done: make(chan struct{}),
			status: r.Status, percent: r.Percent, reason: r.Reason, digest: r.Digest, started: r.Started, ended: r.Ended, finished: true,
			cancel: func() {},
		}
		close(op.done)
		s.mu.Lock()
		s.ops[uuid] = op
		s.mu.Unlock()
	}
	return nil
}

// parseRecord reads the record file of the operation uuid, refusing one
// that cabind would not have written (Recover removes it).
func parseRecord(b []byte, uuid string) (record, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, err
	}
	switch p := r.Partial; {
	case r.UUID != uuid:
		return record{}, fmt.Errorf("the record of operation %q", r.UUID)
	case r.Kind != OpResize && r.Kind != OpExport && r.Kind != OpImport:
		return record{}, fmt.Errorf("unknown kind %q", r.Kind)
	case r.Status <= StatusUnknown || r.Status > StatusBadImage:
		return record{}, fmt.Errorf("unknown status %d", r.Status)
	case r.Percent > 100:
		return record{}, fmt.Errorf("%d%% done", r.Percent)
	case p != nil && (!filepath.IsAbs(p.Dir) || p.Name == "" || p.Name == "." || p.Name == ".." || strings.Contains(p.Name, "/")):
		// Recover unlinks it: one name in an absolute directory, as
		// createHostFile records it.
		return record{}, fmt.Errorf("partial file %q in %q", p.Name, p.Dir)
	}
	if err := (Key{Owner: r.Owner, Name: r.Name}).Validate(); err != nil {
		return record{}, err
	}
	return r, nil
}

// removePartial removes the file p names if its name still leads to the
// same inode, following no link on the way (see openDir).
func removePartial(p *partialFile) error {
	dfd, err := openDir(nil, p.Dir, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, p.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if uint64(st.Dev) != p.Dev || st.Ino != p.Ino {
		return nil
	}
	return unix.Unlinkat(dfd, p.Name, 0)
}
