package ociimage

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// A Digest is "sha256:" and 64 lower-case hex digits: the only form the
// store names anything by.
type Digest string

// Hex is the digest's hex part, a safe path element.
func (d Digest) Hex() string { return strings.TrimPrefix(string(d), "sha256:") }

// ParseDigest checks s is a sha256 digest.
func ParseDigest(field, s string) (Digest, error) {
	hex, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", errdefs.InvalidArgument(field, fmt.Sprintf("%q is not a sha256 digest (sha256:<64 lower-case hex digits>)", s))
	}
	return Digest(s), nil
}

// ParseTag turns a user's image name into the canonical form the store
// keeps tags in, as Docker normalises it: "busybox" is
// "index.docker.io/library/busybox:latest".
func ParseTag(field, s string) (string, error) {
	if s == "" {
		return "", errdefs.InvalidArgument(field, "empty image name")
	}
	t, err := name.NewTag(s)
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrInvalidArgument, "%s: %q is not an image name: %w", field, s, err)
	}
	return t.Name(), nil
}

// ref is what a user names an image by: a tag, a digest, or
// name@digest (which names the digest).
type ref struct {
	tag    string
	digest Digest
}

func parseRef(field, s string) (ref, error) {
	if strings.HasPrefix(s, "sha256:") {
		d, err := ParseDigest(field, s)
		return ref{digest: d}, err
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		if _, err := name.NewDigest(s); err != nil {
			return ref{}, errdefs.Errorf(errdefs.ErrInvalidArgument, "%s: %q is not an image reference: %w", field, s, err)
		}
		d, err := ParseDigest(field, s[i+1:])
		return ref{digest: d}, err
	}
	t, err := ParseTag(field, s)
	return ref{tag: t}, err
}

// indexVersion is the version of index.json this code writes and reads.
const indexVersion = 1

// index is the store's list of images and tags (index.json). Only what
// it names exists for clients; anything else on disk is garbage from an
// import cut short.
type index struct {
	Version int                     `json:"version"`
	Tags    map[string]Digest       `json:"tags"`   // canonical name → manifest digest
	Images  map[Digest]*imageRecord `json:"images"` // by manifest digest
}

type imageRecord struct {
	MediaType string    `json:"media_type"`
	Config    Digest    `json:"config"`
	Layers    []Digest  `json:"layers"`
	Size      int64     `json:"size"`     // manifest, config and layer blobs
	Unpacked  int64     `json:"unpacked"` // bytes of the flattened root filesystem's files
	Created   time.Time `json:"created"`  // from the image's config
	Imported  time.Time `json:"imported"`
}

func newIndex() *index {
	return &index{Version: indexVersion, Tags: map[string]Digest{}, Images: map[Digest]*imageRecord{}}
}

// parseIndex decodes and checks index.json: every digest well formed,
// every tag canonical and naming an image it lists.
func parseIndex(b []byte) (*index, error) {
	ix := newIndex()
	if err := json.Unmarshal(b, ix); err != nil {
		return nil, errdefs.Errorf(errdefs.ErrInternal, "image index: %w", err)
	}
	if ix.Version != indexVersion {
		return nil, errdefs.Errorf(errdefs.ErrInternal, "image index: version %d, this cabind reads %d", ix.Version, indexVersion)
	}
	if ix.Tags == nil {
		ix.Tags = map[string]Digest{}
	}
	if ix.Images == nil {
		ix.Images = map[Digest]*imageRecord{}
	}
	for d, rec := range ix.Images {
		if _, err := ParseDigest("image index: image", string(d)); err != nil {
			return nil, errdefs.Errorf(errdefs.ErrInternal, "%w", err)
		}
		if rec == nil {
			return nil, errdefs.Errorf(errdefs.ErrInternal, "image index: image %s has no record", d)
		}
		for _, b := range append([]Digest{rec.Config}, rec.Layers...) {
			if _, err := ParseDigest("image index: blob", string(b)); err != nil {
				return nil, errdefs.Errorf(errdefs.ErrInternal, "%w", err)
			}
		}
	}
	for t, d := range ix.Tags {
		if c, err := ParseTag("image index: tag", t); err != nil || c != t {
			return nil, errdefs.Errorf(errdefs.ErrInternal, "image index: tag %q is not canonical", t)
		}
		if ix.Images[d] == nil {
			return nil, errdefs.Errorf(errdefs.ErrInternal, "image index: tag %q names %s, which it does not list", t, d)
		}
	}
	return ix, nil
}
