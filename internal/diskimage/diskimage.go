// Package diskimage keeps the disk images of cabind's owners: it creates
// them (raw or qcow2, sparse or preallocated, ext4 on request), resizes,
// exports, imports, lists and destroys them, with qemu-img (Debian's
// qemu-utils) and e2fsprogs run as subprocesses. Formats are always
// explicit (never probed), and a qcow2 with a backing or data file is
// refused before any tool opens it.
//
// Long operations (resize, export, import) are registered by command uuid,
// report progress 0-100 to subscribers, can be cancelled, and are recorded
// on disk so that a restarted cabind answers for them and marks failed
// those it cut short. One operation at a time holds an image; a VM holds
// its own image (the one of its name) while it runs, so that no operation
// starts under it, and it does not start under an operation. Every file is
// written under a temporary name and renamed into place only once
// complete: no half-written image is ever listed.
//
// It knows nothing of the APIs it is served through.
package diskimage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/names"
	"github.com/cabinvm/cabin/internal/statedir"
)

// Errors that decide an operation's status; each is in an errdefs
// category too.
var (
	// ErrNotEnoughSpace: the filesystem the image goes to has too little
	// free space, found before writing or while writing.
	ErrNotEnoughSpace = errors.New("not enough space")
	// ErrBadImage: what was given as an image is not one of its format,
	// or one cabin refuses (a backing or data file).
	ErrBadImage = errors.New("bad image")
	// ErrBusy: an operation is under way on the image.
	ErrBusy = errors.New("a disk operation is in progress on the image")
	// ErrCancelled: the operation was cancelled, or its client went away.
	ErrCancelled = errors.New("operation cancelled")
)

func notEnoughSpace(format string, args ...any) error {
	return errdefs.Errorf(errdefs.ErrResourceExhausted, "%w: %s", ErrNotEnoughSpace, fmt.Sprintf(format, args...))
}

func badImage(format string, args ...any) error {
	return errdefs.Errorf(errdefs.ErrInvalidArgument, "%w: %s", ErrBadImage, fmt.Sprintf(format, args...))
}

func busy(key Key) error {
	return errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s: %w", key, ErrBusy)
}

// Key names an image: names are unique per owner, across locations.
type Key struct {
	Owner, Name string
}

func (k Key) String() string {
	if k.Owner == "" {
		return k.Name
	}
	return k.Owner + "/" + k.Name
}

// MaxName is the longest image name: a VM's, since an image is named
// after the VM it is for.
const MaxName = names.MaxVM

// Validate checks the name by the one rule for names, which is what
// makes it fit to name a file. The owner is never a path element.
func (k Key) Validate() error {
	return names.Check("vm_name", k.Name, MaxName)
}

// Format is an image's format.
type Format int

const (
	FormatRaw Format = iota + 1
	FormatQcow2
)

func (f Format) String() string {
	switch f {
	case FormatRaw:
		return "raw"
	case FormatQcow2:
		return "qcow2"
	}
	return fmt.Sprintf("format(%d)", int(f))
}

func (f Format) ext() string {
	if f == FormatQcow2 {
		return statedir.DiskExtQcow2
	}
	return statedir.DiskExtRaw
}

func (f Format) valid() bool { return f == FormatRaw || f == FormatQcow2 }

// Location is where an image is stored: concierge's storage locations.
type Location int

const (
	LocationRoot Location = iota
	LocationPluginVM
)

func (l Location) dir() string {
	if l == LocationPluginVM {
		return statedir.DiskLocationPluginVM
	}
	return statedir.DiskLocationRoot
}

func (l Location) valid() bool { return l == LocationRoot || l == LocationPluginVM }

// Locations lists every location.
var Locations = []Location{LocationRoot, LocationPluginVM}

// Options configure a Store.
type Options struct {
	Root statedir.Root
	Log  *slog.Logger
	// Tools names the programs run; zero fields take the defaults.
	Tools Tools
	// KeepFinished is how long a finished operation stays answerable;
	// DefaultKeepFinished when zero.
	KeepFinished time.Duration
}

// Tools are the programs a Store runs, found in PATH unless absolute.
type Tools struct {
	QemuImg, Mkfs, Tune2fs, Resize2fs, E2fsck, Dumpe2fs string
}

func (t Tools) withDefaults() Tools {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&t.QemuImg, "qemu-img")
	def(&t.Mkfs, "mkfs.ext4")
	def(&t.Tune2fs, "tune2fs")
	def(&t.Resize2fs, "resize2fs")
	def(&t.E2fsck, "e2fsck")
	def(&t.Dumpe2fs, "dumpe2fs")
	return t
}

// DefaultKeepFinished is how long a finished operation is remembered.
const DefaultKeepFinished = 24 * time.Hour

// Store keeps the disk images of one state directory.
type Store struct {
	// StopVM stops the VM (owner, name) whose image is being destroyed,
	// and returns once it is gone. Nil: a destroy of an image a VM holds
	// fails. Set before serving (the VM manager is made after the store,
	// whose Resource it runs).
	StopVM func(ctx context.Context, owner, name string) error
	// LiveResize grows or shrinks the image of a running VM (owner, name)
	// to size bytes: the hypervisor's block device, then the guest's
	// filesystem. Nil: an image a VM holds is not resized. Set before
	// serving.
	LiveResize func(ctx context.Context, owner, name string, size uint64) error

	opts  Options
	log   *slog.Logger
	tools Tools
	// ctx bounds the operations that outlive the call that started them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// busy is the operation each image is under.
	busy map[Key]*Op
	// held counts the VMs holding each image.
	held map[Key]int
	ops  map[string]*Op
	subs map[chan Progress]Key
}

// New returns a Store over opts.Root. Call Recover before serving.
func New(opts Options) (*Store, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.KeepFinished == 0 {
		opts.KeepFinished = DefaultKeepFinished
	}
	if err := os.MkdirAll(opts.Root.DiskOpsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("disk images: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		opts:   opts,
		log:    opts.Log,
		tools:  opts.Tools.withDefaults(),
		ctx:    ctx,
		cancel: cancel,
		busy:   map[Key]*Op{},
		held:   map[Key]int{},
		ops:    map[string]*Op{},
		subs:   map[chan Progress]Key{},
	}, nil
}

// Close cancels the operations under way and waits for them to clean up.
// Their records say they failed.
func (s *Store) Close() {
	s.cancel()
	s.wg.Wait()
}

// dir is the directory of owner's images in loc.
func (s *Store) dir(owner string, loc Location) statedir.DiskDir {
	return s.opts.Root.DiskDir(statedir.DiskOwnerID(owner), loc.dir())
}

// found is an existing image's file.
type found struct {
	path   string
	dir    statedir.DiskDir
	loc    Location
	format Format
}

// find looks key up in every location. ok is false when there is none.
func (s *Store) find(key Key) (found, bool, error) {
	for _, loc := range Locations {
		d := s.dir(key.Owner, loc)
		for _, f := range []Format{FormatRaw, FormatQcow2} {
			p := d.Image(key.Name, f.ext())
			st, err := os.Lstat(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return found{}, false, fmt.Errorf("image %s: %w", key, err)
			}
			if !st.Mode().IsRegular() {
				return found{}, false, fmt.Errorf("image %s: %s is not a regular file: %w", key, p, errdefs.ErrInternal)
			}
			return found{path: p, dir: d, loc: loc, format: f}, true, nil
		}
	}
	return found{}, false, nil
}

// Hold marks key as held by its VM, which is starting, until the
// returned release is called (once the VM is gone). It fails with ErrBusy
// (errdefs.ErrFailedPrecondition) while an operation is under way on the
// image: the VM must not start then. An image that does not exist is
// held all the same, so that none is imported under the VM's name while
// it runs without its knowing.
func (s *Store) Hold(key Key) (release func(), err error) { return s.hold(key, false) }

// hold is Hold; with force it holds the image under an operation too.
func (s *Store) hold(key Key, force bool) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[key] != nil && !force {
		return nil, busy(key)
	}
	s.held[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.held[key]--; s.held[key] <= 0 {
				delete(s.held, key)
			}
		})
	}, nil
}

// Busy tells whether an operation is under way on key's image.
func (s *Store) Busy(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.busy[key] != nil
}

// Held tells whether a VM holds key's image.
func (s *Store) Held(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[key] > 0
}
