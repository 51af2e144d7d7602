package ociimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// ImportOptions tune one import or pull.
type ImportOptions struct {
	// Tag names the imported image (it must be exactly one), besides
	// the names the source gives it.
	Tag string
	// Progress, when set, is told how far the layers' bytes are read.
	Progress func(Progress)
}

// Progress of an import: bytes of layer blobs read, of Total (0 when the
// source does not say).
type Progress struct {
	Image       Digest // set once known
	Done, Total int64
}

// source is one image to import, whatever it came from.
type source struct {
	digest   Digest // of manifest; "" when the manifest is built here
	manifest []byte
	config   []byte
	layers   []layerSource
	tags     []string
}

type layerSource struct {
	desc v1.Descriptor // of the blob as it is stored; Size -1 when unknown
	open func() (io.ReadCloser, error)
}

var bytesReader = bytes.NewReader

func sha256Digest(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest("sha256:" + hex.EncodeToString(sum[:]))
}

func hashDigest(h hash.Hash) Digest { return Digest("sha256:" + hex.EncodeToString(h.Sum(nil))) }

func toDigest(field string, h v1.Hash) (Digest, error) { return ParseDigest(field, h.String()) }

// fromImage reads an image's manifest and config through go-containerregistry,
// checking each against the digest that names it.
func fromImage(img v1.Image, want v1.Hash) (*source, error) {
	wantD, err := toDigest("manifest digest", want)
	if err != nil {
		return nil, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, notFoundOr(fmt.Errorf("manifest %s: %w", want, err))
	}
	if got := sha256Digest(raw); got != wantD {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "manifest %s: content has digest %s", want, got)
	}
	m, err := v1.ParseManifest(bytesReader(raw))
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "manifest %s: %w", want, err)
	}
	switch m.MediaType {
	case "", types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return nil, errdefs.Errorf(errdefs.ErrNotImplemented, "manifest %s: media type %q is not an image manifest cabin reads", want, m.MediaType)
	}
	if m.SchemaVersion != 2 {
		return nil, errdefs.Errorf(errdefs.ErrNotImplemented, "manifest %s: schema version %d (only 2 is read)", want, m.SchemaVersion)
	}
	cfgD, err := toDigest("config digest", m.Config.Digest)
	if err != nil {
		return nil, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return nil, notFoundOr(fmt.Errorf("config %s: %w", cfgD, err))
	}
	if got := sha256Digest(cfg); got != cfgD || int64(len(cfg)) != m.Config.Size {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "config %s: content has digest %s and %d bytes, the manifest says %d", cfgD, got, len(cfg), m.Config.Size)
	}
	src := &source{digest: wantD, manifest: raw, config: cfg}
	for _, l := range m.Layers {
		switch l.MediaType {
		case types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerLayer, types.DockerUncompressedLayer:
		case types.DockerForeignLayer, types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
			return nil, errdefs.Errorf(errdefs.ErrNotImplemented, "layer %s: foreign (non-distributable) layers are not supported", l.Digest)
		default:
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "layer %s: media type %q is not a layer", l.Digest, l.MediaType)
		}
		if _, err := toDigest("layer digest", l.Digest); err != nil {
			return nil, err
		}
		if l.Size < 0 {
			return nil, errdefs.InvalidArgument("layer size", fmt.Sprintf("%d", l.Size))
		}
		h := l.Digest
		src.layers = append(src.layers, layerSource{desc: l, open: func() (io.ReadCloser, error) {
			cl, err := img.LayerByDigest(h)
			if err != nil {
				return nil, err
			}
			return cl.Compressed()
		}})
	}
	return src, nil
}

func notFoundOr(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "%w (the source names a blob it does not hold)", err)
	}
	return err
}

// commit stores src: its layers (verified, then unpacked in order into a
// new root filesystem), config and manifest, and lists it last, so that
// an import cut short at any point lists nothing.
func (s *Store) commit(ctx context.Context, src *source, opts ImportOptions) (Digest, error) {
	cf, err := v1.ParseConfigFile(bytesReader(src.config))
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrInvalidArgument, "config: %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(src.layers) {
		return "", errdefs.Errorf(errdefs.ErrInvalidArgument, "config lists %d layers (rootfs.diff_ids), the manifest %d", len(cf.RootFS.DiffIDs), len(src.layers))
	}
	if cf.OS != "" && cf.OS != "linux" || cf.Architecture != "" && cf.Architecture != "amd64" {
		return "", errdefs.Errorf(errdefs.ErrFailedPrecondition, "image is for %s/%s; this host runs linux/amd64", cf.OS, cf.Architecture)
	}
	cfgD := sha256Digest(src.config)
	if d, ok := s.existing(src.digest, cfgD); ok {
		return d, s.tag(d, src.tags)
	}

	var blobs []Digest
	for _, l := range src.layers {
		blobs = append(blobs, Digest(l.desc.Digest.String()))
	}
	if src.digest != "" {
		blobs = append(blobs, src.digest)
	}
	blobs = append(blobs, cfgD)
	s.pin(blobs, 1)
	defer s.pin(blobs, -1)

	tmp, err := os.MkdirTemp(s.path("tmp"), "rootfs-")
	if err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	u, err := newUnpacker(tmp, s.opts.Limits, s.opts.AllowDevices, s.opts.Log)
	if err != nil {
		return "", err
	}
	defer u.close()
	prog := &progress{fn: opts.Progress, p: Progress{Image: src.digest}}
	for _, l := range src.layers {
		if l.desc.Size > 0 {
			prog.p.Total += l.desc.Size
		}
	}
	var size int64
	var layers []Digest
	for i, l := range src.layers {
		n, err := s.layer(ctx, u, l, cf.RootFS.DiffIDs[i], prog)
		if err != nil {
			return "", fmt.Errorf("layer %d of %d (%s): %w", i+1, len(src.layers), l.desc.Digest, err)
		}
		src.layers[i].desc.Size = n
		size += n
		layers = append(layers, Digest(l.desc.Digest.String()))
	}
	if src.digest == "" {
		if src.manifest, err = ociManifest(src.config, src.layers); err != nil {
			return "", err
		}
		src.digest = sha256Digest(src.manifest)
		s.pin([]Digest{src.digest}, 1)
		defer s.pin([]Digest{src.digest}, -1)
	}
	for _, b := range [][]byte{src.config, src.manifest} {
		if err := s.putBlob(b); err != nil {
			return "", err
		}
	}
	size += int64(len(src.config) + len(src.manifest))
	if u.skipped > 0 {
		s.opts.Log.Warn("image imported without its device nodes and fifos", "image", src.digest, "skipped", u.skipped)
	}

	unlock := s.lock(src.digest)
	defer unlock()
	if d, ok := s.existing(src.digest, ""); ok {
		return d, s.tag(d, src.tags)
	}
	dst := s.rootfsPath(src.digest)
	if s.keptTree(dst) {
		// This very image's tree, kept after a removal for the VMs that
		// have the share (share.go): running containers read it, and
		// it holds the same files. The new one goes with tmp.
	} else {
		if err := os.RemoveAll(dst); err != nil {
			return "", fmt.Errorf("image store: %w", err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return "", fmt.Errorf("image store: %w", err)
		}
	}
	// Blobs and root filesystem on disk before the index names them: an
	// image listed after a power cut is whole.
	if err := syncFS(s.dir); err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	rec := &imageRecord{MediaType: mediaTypeOf(src.manifest), Config: cfgD, Layers: layers, Size: size, Unpacked: u.written, Created: cf.Created.Time, Imported: time.Now().UTC()}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.index.clone()
	next.Images[src.digest] = rec
	for _, t := range src.tags {
		next.Tags[t] = src.digest
	}
	if err := s.saveLocked(next); err != nil {
		return "", err
	}
	return src.digest, nil
}

// existing finds an image the store already lists: by manifest digest,
// or, for a source whose manifest is built here, by config (whose
// rootfs.diff_ids name every layer's content).
func (s *Store) existing(d, cfg Digest) (Digest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d != "" {
		return d, s.index.Images[d] != nil
	}
	for id, rec := range s.index.Images {
		if rec.Config == cfg && rec.MediaType == string(types.OCIManifestSchema1) {
			return id, true
		}
	}
	return "", false
}

func (s *Store) tag(d Digest, tags []string) error {
	if len(tags) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.index.Images[d] == nil {
		return errdefs.Errorf(errdefs.ErrNotFound, "image %s was removed meanwhile", d)
	}
	next := s.index.clone()
	for _, t := range tags {
		next.Tags[t] = d
	}
	return s.saveLocked(next)
}

// pin keeps blobs from garbage collection while an import needs them.
func (s *Store) pin(ds []Digest, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if s.pending[d] += n; s.pending[d] <= 0 {
			delete(s.pending, d)
		}
	}
}

func mediaTypeOf(manifest []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(manifest, &m)
	return m.MediaType
}

// ociManifest builds the OCI manifest of an image whose source (a
// `docker save` tarball) has none with digests of its blobs.
func ociManifest(config []byte, layers []layerSource) ([]byte, error) {
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(config)), Digest: v1.Hash{Algorithm: "sha256", Hex: sha256Digest(config).Hex()}},
	}
	for _, l := range layers {
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: l.desc.MediaType, Size: l.desc.Size, Digest: l.desc.Digest})
	}
	return json.Marshal(m)
}

// putBlob stores a small blob already in memory.
func (s *Store) putBlob(b []byte) error {
	d := sha256Digest(b)
	if _, err := os.Stat(s.blobPath(d)); err == nil {
		return nil
	}
	f, err := os.CreateTemp(s.path("tmp"), "blob-")
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("image store: %w", err)
	}
	return s.landBlob(f, d)
}

// landBlob closes f, a complete verified blob, and renames it into
// place. It is not synced on its own: commit syncs the store's
// filesystem once before the index names the image (§21: a sync per blob
// cost half again the import's time).
func (s *Store) landBlob(f *os.File, d Digest) error {
	if err := f.Close(); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	if err := os.Rename(f.Name(), s.blobPath(d)); err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	return nil
}

// maxTrailing is how much a layer may hold after its tar's end (padding
// to a record size, an empty gzip member) before it is refused.
const maxTrailing = 1 << 20

// layer reads one layer blob once: storing it (unless the store has it),
// hashing it, and unpacking its tar; the blob's digest and size are
// checked against the manifest and the tar's against the config's diff
// id, and a mismatch fails the import after the fact.
func (s *Store) layer(ctx context.Context, u *unpacker, l layerSource, diffID v1.Hash, prog *progress) (int64, error) {
	want := Digest(l.desc.Digest.String())
	rc, err := l.open()
	if err != nil {
		return 0, notFoundOr(fmt.Errorf("open: %w", err))
	}
	defer rc.Close()
	var in io.Reader = ctxReader{ctx, rc}
	if l.desc.Size >= 0 {
		in = io.LimitReader(in, l.desc.Size+1)
	}
	var sink io.Writer = io.Discard
	var f *os.File
	if _, err := os.Stat(s.blobPath(want)); err != nil {
		if f, err = os.CreateTemp(s.path("tmp"), "blob-"); err != nil {
			return 0, fmt.Errorf("image store: %w", err)
		}
		defer func() {
			f.Close()
			os.Remove(f.Name())
		}()
		sink = f
	}
	h := sha256.New()
	cnt := &counter{prog: prog}
	br := bufio.NewReaderSize(io.TeeReader(in, io.MultiWriter(sink, h, cnt)), 256<<10)
	// Reading, hashing and decompressing on one goroutine, writing files
	// on this one: the two halves of the work overlap as `tar -xzf`'s
	// gzip process and tar do.
	dh := sha256.New()
	pr, pw := io.Pipe()
	produced := make(chan error, 1)
	go func() {
		err := decompress(br, pw, dh, u.limits.MaxTotalSize+u.limits.MaxEntries*perEntryOverhead)
		pw.CloseWithError(err)
		produced <- err
	}()
	fail := func(err error) (int64, error) {
		pr.CloseWithError(err)
		<-produced
		return 0, err
	}
	if err := u.layer(pr); err != nil {
		return fail(err)
	}
	if n, err := io.Copy(io.Discard, io.LimitReader(pr, maxTrailing+1)); err != nil {
		return fail(err)
	} else if n > maxTrailing {
		return fail(errdefs.Errorf(errdefs.ErrInvalidArgument, "more than %d bytes after the tar's end", maxTrailing))
	}
	if err := <-produced; err != nil {
		return 0, err
	}
	if got := hashDigest(h); got != want || (l.desc.Size >= 0 && cnt.n != l.desc.Size) {
		return 0, errdefs.Errorf(errdefs.ErrInvalidArgument, "blob has digest %s and %d bytes, the manifest says %s and %d", got, cnt.n, want, l.desc.Size)
	}
	if got := hashDigest(dh); got != Digest(diffID.String()) {
		return 0, errdefs.Errorf(errdefs.ErrInvalidArgument, "uncompressed layer has digest %s, the config says %s", got, diffID)
	}
	if f != nil {
		if err := s.landBlob(f, want); err != nil {
			return 0, err
		}
	}
	return cnt.n, nil
}

// decompress copies the layer's tar to w (and dh), decompressing it as
// gzip or zstd, or not, by its first bytes rather than by the media type
// a source claims; at most limit bytes come out, and at most maxTrailing
// bytes may follow the compressed stream.
func decompress(br *bufio.Reader, w io.Writer, dh io.Writer, limit int64) error {
	var dec io.ReadCloser
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		g, err := gzip.NewReader(br)
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "gzip: %w", err)
		}
		dec = g
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "zstd: %w", err)
		}
		dec = d.IOReadCloser()
	default:
		dec = io.NopCloser(br)
	}
	defer dec.Close()
	if _, err := io.Copy(w, io.TeeReader(&capReader{r: dec, left: limit}, dh)); err != nil {
		if errors.Is(err, io.ErrClosedPipe) || errors.Is(err, errdefs.ErrResourceExhausted) {
			return err
		}
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "decompress: %w", err)
	}
	if n, err := io.Copy(io.Discard, io.LimitReader(br, maxTrailing+1)); err != nil {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "after the compressed stream: %w", err)
	} else if n > maxTrailing {
		return errdefs.Errorf(errdefs.ErrInvalidArgument, "more than %d bytes after the compressed stream", maxTrailing)
	}
	return nil
}

// capReader fails once more than left bytes come out of r: what counts
// is what decompression produces, not what headers claim.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.left -= int64(n); c.left < 0 {
		return n, errdefs.Errorf(errdefs.ErrResourceExhausted, "layer expands past the image's cap")
	}
	return n, err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type progress struct {
	fn func(Progress)
	p  Progress
}

type counter struct {
	prog *progress
	n    int64
}

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if c.prog.fn != nil {
		c.prog.p.Done += int64(len(p))
		c.prog.fn(c.prog.p)
	}
	return len(p), nil
}

func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}
