// Package ociimage is cabind's store of OCI images: imported from an OCI
// image layout or a `docker save` tarball, or pulled from a registry
// (formats, references and registries through go-containerregistry),
// kept as content-addressed blobs with an index of tags, and unpacked
// once per image into a flattened root filesystem shared by every
// container of that image, plus a read-only ext4 copy of it for guests.
//
// Layout below the store's root (every name a digest's hex):
//
//	index.json              tags and images (written atomically)
//	blobs/sha256/HEX        manifests, configs, layers, each verified before it lands
//	rootfs/HEX/             the flattened root filesystem of manifest HEX
//	block/HEX.ext4          its read-only ext4 image
//	tmp/                    work in progress; emptied by Open
package ociimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// Options configure a Store.
type Options struct {
	// Limits cap what unpacking one image writes; zero fields take
	// DefaultLimits'.
	Limits Limits
	// AllowDevices creates the device nodes and fifos layers hold. Off,
	// they are left out with a warning, as rootless Docker and containerd
	// do: images carrying /dev entries still run (the guest has its own
	// /dev), and a layer cannot hand a container a node for a host device.
	AllowDevices bool
	// Mkfs is the mkfs.ext4 program; empty looks it up in PATH.
	Mkfs string
	Log  *slog.Logger
}

// Store is the image store. Its methods are safe for concurrent use.
type Store struct {
	dir  string
	opts Options

	mu      sync.Mutex
	index   *index
	held    map[Digest]int
	pending map[Digest]int // blobs of imports under way, kept from GC
	locks   map[Digest]*sync.Mutex
	shares  int // VMs that have ShareDir (share.go)
}

// Open opens the store rooted at dir, creating it, and clears what an
// earlier cabind left unfinished: temporaries, and blobs, root
// filesystems and block images that no listed image needs.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	if opts.Limits.MaxEntries <= 0 {
		opts.Limits.MaxEntries = DefaultLimits.MaxEntries
	}
	if opts.Limits.MaxFileSize <= 0 {
		opts.Limits.MaxFileSize = DefaultLimits.MaxFileSize
	}
	if opts.Limits.MaxTotalSize <= 0 {
		opts.Limits.MaxTotalSize = DefaultLimits.MaxTotalSize
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, opts: opts, held: map[Digest]int{}, pending: map[Digest]int{}, locks: map[Digest]*sync.Mutex{}}
	for _, d := range []string{dir, s.path("blobs"), s.path("blobs", "sha256"), s.path("rootfs"), s.path("block")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	if err := os.RemoveAll(s.path("tmp")); err != nil {
		return nil, fmt.Errorf("image store: clear temporaries: %w", err)
	}
	if err := os.Mkdir(s.path("tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	b, err := os.ReadFile(s.path("index.json"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.index = newIndex()
	case err != nil:
		return nil, fmt.Errorf("image store: %w", err)
	default:
		if s.index, err = parseIndex(b); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.gcLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) blobPath(d Digest) string   { return s.path("blobs", "sha256", d.Hex()) }
func (s *Store) rootfsPath(d Digest) string { return s.path("rootfs", d.Hex()) }
func (s *Store) blockPath(d Digest) string  { return s.path("block", d.Hex()+".ext4") }

// Image is one image as List shows it.
type Image struct {
	Digest   Digest // of the manifest
	Tags     []string
	Size     int64 // blobs: manifest, config, layers as stored
	Unpacked int64 // files of the flattened root filesystem
	Created  time.Time
}

// Details is what Inspect tells of an image.
type Details struct {
	Image
	OS, Architecture string
	Config           Config
	Layers           []Layer
	RootFS           string // the flattened root filesystem's directory
}

// Config is the part of an image's config that says how to run it.
type Config struct {
	Entrypoint, Cmd, Env []string
	User, WorkingDir     string
	ExposedPorts         []string // "80/tcp", sorted
	Labels               map[string]string
	StopSignal           string
}

// Layer is one layer blob.
type Layer struct {
	Digest Digest
	Size   int64
}

// List returns every image, by tag then digest.
func (s *Store) List(context.Context) []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Image
	for d, rec := range s.index.Images {
		out = append(out, s.imageLocked(d, rec))
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := "", ""
		if len(out[i].Tags) > 0 {
			a = out[i].Tags[0]
		}
		if len(out[j].Tags) > 0 {
			b = out[j].Tags[0]
		}
		if a != b {
			return a < b
		}
		return out[i].Digest < out[j].Digest
	})
	return out
}

func (s *Store) imageLocked(d Digest, rec *imageRecord) Image {
	img := Image{Digest: d, Size: rec.Size, Unpacked: rec.Unpacked, Created: rec.Created}
	for t, td := range s.index.Tags {
		if td == d {
			img.Tags = append(img.Tags, t)
		}
	}
	slices.Sort(img.Tags)
	return img
}

// resolveLocked finds the image ref names.
func (s *Store) resolveLocked(field, r string) (Digest, error) {
	p, err := parseRef(field, r)
	if err != nil {
		return "", err
	}
	d := p.digest
	if p.tag != "" {
		var ok bool
		if d, ok = s.index.Tags[p.tag]; !ok {
			return "", errdefs.Errorf(errdefs.ErrNotFound, "image %q: no such image", r)
		}
	}
	if s.index.Images[d] == nil {
		return "", errdefs.Errorf(errdefs.ErrNotFound, "image %q: no such image", r)
	}
	return d, nil
}

// Inspect describes the image ref names (a tag, a digest or name@digest).
func (s *Store) Inspect(_ context.Context, ref string) (Details, error) {
	s.mu.Lock()
	d, err := s.resolveLocked("image", ref)
	if err != nil {
		s.mu.Unlock()
		return Details{}, err
	}
	rec := s.index.Images[d]
	det := Details{Image: s.imageLocked(d, rec), RootFS: s.rootfsPath(d)}
	s.mu.Unlock()

	b, err := os.ReadFile(s.blobPath(rec.Config))
	if err != nil {
		return Details{}, errdefs.Errorf(errdefs.ErrInternal, "image %s: config: %w", d, err)
	}
	cf, err := v1.ParseConfigFile(bytesReader(b))
	if err != nil {
		return Details{}, errdefs.Errorf(errdefs.ErrInternal, "image %s: config: %w", d, err)
	}
	det.OS, det.Architecture = cf.OS, cf.Architecture
	c := cf.Config
	det.Config = Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, User: c.User, WorkingDir: c.WorkingDir, Labels: c.Labels, StopSignal: c.StopSignal}
	for p := range c.ExposedPorts {
		det.Config.ExposedPorts = append(det.Config.ExposedPorts, p)
	}
	slices.Sort(det.Config.ExposedPorts)
	for _, l := range rec.Layers {
		st, err := os.Stat(s.blobPath(l))
		if err != nil {
			return Details{}, errdefs.Errorf(errdefs.ErrInternal, "image %s: layer: %w", d, err)
		}
		det.Layers = append(det.Layers, Layer{Digest: l, Size: st.Size()})
	}
	return det, nil
}

// ErrInUse is returned (with errdefs.ErrFailedPrecondition) by Remove
// while a container holds the image.
var ErrInUse = errors.New("image in use")

// Remove removes a tag or, named by digest, an image with all its tags,
// as `docker rmi` does; an image whose last tag goes is removed too. It
// is refused while the image is held. Blobs no other image needs go with
// it.
func (s *Store) Remove(_ context.Context, ref string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := parseRef("image", ref)
	if err != nil {
		return nil, err
	}
	d, err := s.resolveLocked("image", ref)
	if err != nil {
		return nil, err
	}
	img := s.imageLocked(d, s.index.Images[d])
	removeImage := p.tag == "" || len(img.Tags) <= 1
	if removeImage && s.held[d] > 0 {
		return nil, errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %q: %d containers use it: %w", ref, s.held[d], ErrInUse)
	}
	next := s.index.clone()
	removed := []string{p.tag}
	if removeImage {
		removed = append(img.Tags, string(d))
		for _, t := range img.Tags {
			delete(next.Tags, t)
		}
		delete(next.Images, d)
	} else {
		delete(next.Tags, p.tag)
	}
	if err := s.saveLocked(next); err != nil {
		return nil, err
	}
	if removeImage {
		if err := s.gcLocked(); err != nil {
			s.opts.Log.Warn("image store: garbage collection", "err", err)
		}
	}
	return removed, nil
}

// Hold marks the image ref names as used by a container until release
// is called; Remove refuses it meanwhile. It returns the image's digest
// and flattened root filesystem.
func (s *Store) Hold(_ context.Context, ref string) (d Digest, rootfs string, release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, err = s.resolveLocked("image", ref); err != nil {
		return "", "", nil, err
	}
	s.held[d]++
	var once sync.Once
	return d, s.rootfsPath(d), func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.held[d]--; s.held[d] <= 0 {
				delete(s.held, d)
			}
		})
	}, nil
}

func (ix *index) clone() *index {
	out := newIndex()
	for t, d := range ix.Tags {
		out.Tags[t] = d
	}
	for d, r := range ix.Images {
		out.Images[d] = r
	}
	return out
}

// saveLocked writes next as index.json (temp file, fsync, rename, fsync
// of the directory) and makes it the index.
func (s *Store) saveLocked(next *index) error {
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	f, err := os.CreateTemp(s.path("tmp"), "index-")
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("image index: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("image index: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	if err := os.Rename(f.Name(), s.path("index.json")); err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	s.index = next
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// gcLocked removes blobs no listed image and no import under way needs,
// and root filesystems and block images of unlisted images.
func (s *Store) gcLocked() error {
	keep := map[string]bool{}
	for d, rec := range s.index.Images {
		keep[d.Hex()] = true
		keep[rec.Config.Hex()] = true
		for _, l := range rec.Layers {
			keep[l.Hex()] = true
		}
	}
	for d := range s.pending {
		keep[d.Hex()] = true
	}
	var errs []error
	sweep := func(dir string, name func(string) string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			return
		}
		for _, e := range ents {
			if !keep[name(e.Name())] {
				errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
			}
		}
	}
	same := func(n string) string { return n }
	sweep(s.path("blobs", "sha256"), same)
	// While a VM has the trees' share, a running container may read
	// the tree of an image removed meanwhile (share.go).
	if !s.keepTreeLocked() {
		sweep(s.path("rootfs"), func(n string) string {
			if s.pending[Digest("sha256:"+n)] > 0 {
				return n
			}
			if _, ok := s.index.Images[Digest("sha256:"+n)]; ok {
				return n
			}
			return ""
		})
	}
	sweep(s.path("block"), func(n string) string {
		h := filepath.Base(n[:len(n)-len(filepath.Ext(n))])
		if _, ok := s.index.Images[Digest("sha256:"+h)]; ok && filepath.Ext(n) == ".ext4" {
			return h
		}
		return ""
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("image store: garbage collection: %w", err)
	}
	return nil
}

// lock serialises work on one image digest (import, block image build).
func (s *Store) lock(d Digest) func() {
	s.mu.Lock()
	m := s.locks[d]
	if m == nil {
		m = &sync.Mutex{}
		s.locks[d] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}
