package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// hostPlatform is the only platform whose images cabin runs.
var hostPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// ImportDir imports every image of the OCI image layout in dir.
func (s *Store) ImportDir(ctx context.Context, dir string, opts ImportOptions) ([]Digest, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "%s is not an OCI image layout: %w", dir, err)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "OCI image layout: %w", err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "OCI image layout: index.json: %w", err)
	}
	var srcs []*source
	for _, desc := range im.Manifests {
		img, d, err := pickImage(ii, desc)
		if err != nil {
			return nil, err
		}
		src, err := fromImage(img, d)
		if err != nil {
			return nil, err
		}
		src.tags = tagsOf(desc.Annotations)
		srcs = append(srcs, src)
	}
	return s.commitAll(ctx, srcs, opts)
}

// ImportReader imports an OCI image layout tar or a `docker save`
// tarball read from r (stdin, a stream from a client), spooling it to a
// temporary file first: both formats need to be read out of order.
func (s *Store) ImportReader(ctx context.Context, r io.Reader, opts ImportOptions) ([]Digest, error) {
	f, err := os.CreateTemp(s.path("tmp"), "import-")
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	max := s.opts.Limits.MaxTotalSize + s.opts.Limits.MaxEntries*perEntryOverhead
	n, err := io.Copy(f, io.LimitReader(ctxReader{ctx, r}, max+1))
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	if n > max {
		return nil, errdefs.Errorf(errdefs.ErrResourceExhausted, "image tarball is over %d bytes", max)
	}
	return s.ImportFile(ctx, f, opts)
}

// ImportFile imports an OCI image layout tar or a `docker save` tarball
// from f, a regular file (one a caller opened: cabind reads nothing else
// of theirs).
func (s *Store) ImportFile(ctx context.Context, f *os.File, opts ImportOptions) ([]Digest, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("image tarball: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("file", "not a regular file (give a tarball, or a directory to ImportDir)")
	}
	size := st.Size()
	opener := func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(f, 0, size)), nil }
	names, err := tarNames(opener)
	if err != nil {
		return nil, err
	}
	switch {
	case names["manifest.json"]:
		return s.importDocker(ctx, opener, opts)
	case names["oci-layout"] && names["index.json"]:
		dir, err := os.MkdirTemp(s.path("tmp"), "layout-")
		if err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
		defer os.RemoveAll(dir)
		if err := s.extractLayout(opener, dir); err != nil {
			return nil, err
		}
		return s.ImportDir(ctx, dir, opts)
	}
	return nil, errdefs.InvalidArgument("file", "neither an OCI image layout tar (oci-layout, index.json) nor a docker save tarball (manifest.json)")
}

func tarNames(opener tarball.Opener) (map[string]bool, error) {
	rc, err := opener()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	names := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "image tarball: truncated or malformed tar: %w", err)
		}
		if n, err := cleanName("name", hdr.Name); err == nil {
			names[n] = true
		}
	}
}

// extractLayout writes the OCI layout files of a tar into dir: only
// oci-layout, index.json and blobs/ALGORITHM/HEX, each name checked.
func (s *Store) extractLayout(opener tarball.Opener, dir string) error {
	rc, err := opener()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var entries, total int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "image tarball: truncated or malformed tar: %w", err)
		}
		if entries++; entries > s.opts.Limits.MaxEntries {
			return errdefs.Errorf(errdefs.ErrResourceExhausted, "image tarball has more than %d entries", s.opts.Limits.MaxEntries)
		}
		n, err := cleanName("name", hdr.Name)
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg || !layoutFile(n) {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(n)), 0o700); err != nil {
			return fmt.Errorf("image store: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, n), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return errdefs.InvalidArgument("name", fmt.Sprintf("%q is in the tarball twice", n))
		}
		if err != nil {
			return fmt.Errorf("image store: %w", err)
		}
		w, err := io.Copy(f, io.LimitReader(tr, s.opts.Limits.MaxTotalSize-total+1))
		f.Close()
		if total += w; err != nil {
			return errdefs.Errorf(errdefs.ErrInvalidArgument, "image tarball: truncated or malformed tar: %w", err)
		}
		if total > s.opts.Limits.MaxTotalSize {
			return errdefs.Errorf(errdefs.ErrResourceExhausted, "image tarball holds more than %d bytes", s.opts.Limits.MaxTotalSize)
		}
	}
}

// layoutFile tells whether n (clean) is a file of an OCI layout.
func layoutFile(n string) bool {
	if n == "oci-layout" || n == "index.json" {
		return true
	}
	parts := strings.Split(n, "/")
	if len(parts) != 3 || parts[0] != "blobs" || parts[1] != "sha256" {
		return false
	}
	_, err := ParseDigest("blob", "sha256:"+parts[2])
	return err == nil
}

// importDocker imports the images of a `docker save` tarball, whose
// layers are stored uncompressed as they come (named by their diff id)
// under an OCI manifest built here.
func (s *Store) importDocker(ctx context.Context, opener tarball.Opener, opts ImportOptions) ([]Digest, error) {
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: manifest.json: %w", err)
	}
	if len(m) == 0 {
		return nil, errdefs.InvalidArgument("manifest.json", "lists no image")
	}
	var srcs []*source
	for i, e := range m {
		var tag *name.Tag
		var tags []string
		for _, rt := range e.RepoTags {
			t, err := name.NewTag(rt)
			if err != nil {
				return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: manifest.json: tag %q: %w", rt, err)
			}
			if tag == nil {
				tag = &t
			}
			tags = append(tags, t.Name())
		}
		if tag == nil && len(m) > 1 {
			return nil, errdefs.InvalidArgument("manifest.json", fmt.Sprintf("image %d has no tag in a tarball of %d images", i+1, len(m)))
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: %w", err)
		}
		cfg, err := img.RawConfigFile()
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: config: %w", err)
		}
		cf, err := v1.ParseConfigFile(bytesReader(cfg))
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: config: %w", err)
		}
		layers, err := img.Layers()
		if err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: %w", err)
		}
		if len(layers) != len(cf.RootFS.DiffIDs) {
			return nil, errdefs.Errorf(errdefs.ErrInvalidArgument, "docker save tarball: %d layers, the config lists %d", len(layers), len(cf.RootFS.DiffIDs))
		}
		src := &source{config: cfg, tags: tags}
		for j, l := range layers {
			if _, err := toDigest("diff id", cf.RootFS.DiffIDs[j]); err != nil {
				return nil, err
			}
			src.layers = append(src.layers, layerSource{
				desc: v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: cf.RootFS.DiffIDs[j], Size: -1},
				open: l.Uncompressed,
			})
		}
		srcs = append(srcs, src)
	}
	return s.commitAll(ctx, srcs, opts)
}

func (s *Store) commitAll(ctx context.Context, srcs []*source, opts ImportOptions) ([]Digest, error) {
	if opts.Tag != "" {
		t, err := ParseTag("tag", opts.Tag)
		if err != nil {
			return nil, err
		}
		if len(srcs) != 1 {
			return nil, errdefs.InvalidArgument("tag", fmt.Sprintf("the source holds %d images; a tag names one", len(srcs)))
		}
		srcs[0].tags = append(srcs[0].tags, t)
	}
	if len(srcs) == 0 {
		return nil, errdefs.InvalidArgument("source", "holds no image")
	}
	var out []Digest
	for _, src := range srcs {
		d, err := s.commit(ctx, src, opts)
		if err != nil {
			s.mu.Lock()
			if gcErr := s.gcLocked(); gcErr != nil {
				s.opts.Log.Warn("image store: garbage collection", "err", gcErr)
			}
			s.mu.Unlock()
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

// tagsOf reads an image's names from a layout's annotations: containerd's
// and Docker's full name, or the OCI ref name where it is a full name
// (one that is only a tag names no repository).
func tagsOf(ann map[string]string) []string {
	for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
		v := ann[k]
		if v == "" || !strings.ContainsAny(v, "/:") {
			continue
		}
		if t, err := ParseTag("annotation", v); err == nil {
			return []string{t}
		}
	}
	return nil
}

// pickImage resolves a layout index entry to an image for linux/amd64.
func pickImage(ii v1.ImageIndex, desc v1.Descriptor) (v1.Image, v1.Hash, error) {
	switch {
	case desc.MediaType.IsImage():
		if desc.Platform != nil && desc.Platform.OS != "" && !desc.Platform.Satisfies(hostPlatform) {
			return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s is for %s; this host runs linux/amd64", desc.Digest, desc.Platform)
		}
		img, err := ii.Image(desc.Digest)
		return img, desc.Digest, notFoundOr(err)
	case desc.MediaType.IsIndex():
		child, err := ii.ImageIndex(desc.Digest)
		if err != nil {
			return nil, v1.Hash{}, notFoundOr(fmt.Errorf("index %s: %w", desc.Digest, err))
		}
		raw, err := child.RawManifest()
		if err != nil {
			return nil, v1.Hash{}, notFoundOr(fmt.Errorf("index %s: %w", desc.Digest, err))
		}
		if got := sha256Digest(raw); string(got) != desc.Digest.String() {
			return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrInvalidArgument, "index %s: content has digest %s", desc.Digest, got)
		}
		return pickFromIndex(child)
	}
	return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrNotImplemented, "%s: media type %q is neither an image nor an index", desc.Digest, desc.MediaType)
}

// pickFromIndex picks the linux/amd64 image of a multi-platform index.
func pickFromIndex(idx v1.ImageIndex) (v1.Image, v1.Hash, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrInvalidArgument, "image index: %w", err)
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil || !m.MediaType.IsImage() {
			continue
		}
		if m.Platform.Satisfies(hostPlatform) {
			img, err := idx.Image(m.Digest)
			return img, m.Digest, notFoundOr(err)
		}
		have = append(have, m.Platform.String())
	}
	slices.Sort(have)
	return nil, v1.Hash{}, errdefs.Errorf(errdefs.ErrFailedPrecondition, "image index has no linux/amd64 image (it has %s)", strings.Join(have, ", "))
}

// PullOptions tune a pull.
type PullOptions struct {
	ImportOptions
	// Transport, when set, carries the registry's HTTP (tests; proxies).
	Transport http.RoundTripper
}

// Pull fetches the image ref names from its registry (credentials from
// cabind's Docker config, else anonymous) and imports it, tagged by ref.
func (s *Store) Pull(ctx context.Context, ref string, opts PullOptions) (Digest, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrInvalidArgument, "image reference %q: %w", ref, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithPlatform(hostPlatform)}
	if opts.Transport != nil {
		ropts = append(ropts, remote.WithTransport(opts.Transport))
	}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return "", registryError(ref, err)
	}
	var img v1.Image
	d := desc.Digest
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return "", registryError(ref, err)
		}
		if img, d, err = pickFromIndex(idx); err != nil {
			return "", err
		}
	} else if img, err = desc.Image(); err != nil {
		return "", registryError(ref, err)
	}
	src, err := fromImage(img, d)
	if err != nil {
		return "", registryError(ref, err)
	}
	if t, ok := r.(name.Tag); ok {
		src.tags = []string{t.Name()}
	}
	out, err := s.commitAll(ctx, []*source{src}, opts.ImportOptions)
	if err != nil {
		return "", registryError(ref, err)
	}
	return out[0], nil
}

// registryError puts a registry's answer in a category: unknown names
// are NotFound, refused credentials PermissionDenied, and a registry that
// cannot be reached Unavailable.
func registryError(ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return errdefs.Errorf(errdefs.ErrNotFound, "pull %s: %w", ref, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return errdefs.Errorf(errdefs.ErrPermissionDenied, "pull %s: %w", ref, err)
		}
		return errdefs.Errorf(errdefs.ErrUnavailable, "pull %s: %w", ref, err)
	}
	for _, k := range []error{errdefs.ErrInvalidArgument, errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented, errdefs.ErrResourceExhausted, errdefs.ErrNotFound, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, k) {
			return err
		}
	}
	return errdefs.Errorf(errdefs.ErrUnavailable, "pull %s: %w", ref, err)
}
