package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cabinvm/cabin/internal/ociimage"
)

// The OCI image measurements (issue 17), on cabind's image store
// (internal/ociimage) in this process, in a directory of its own under
// /var/tmp: a generated image of ociLayers gzip layers holding ociData
// bytes of files in all (base64 of random bytes: about as compressible as
// real binaries and text), imported from an OCI layout directory into a
// new store (verify, store blobs, unpack), against GNU `tar -xzf` of the
// same layer blobs in order into one directory; then the ext4 block image
// of the result, and, where mkfs.erofs is installed, an erofs image of the
// same tree for comparison. Medians of ociRounds, taking turns.
const (
	ociRounds      = 5
	ociLayers      = 4
	ociData        = 100 << 20
	ociFilesPerLay = 400
)

func benchOCIImage(ctx context.Context, t *table) error {
	if _, err := exec.LookPath("tar"); err != nil {
		return fmt.Errorf("needs GNU tar for the baseline: %w", err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "cabin-bench-oci")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "layout")
	if err := writeBenchImage(src); err != nil {
		return err
	}
	blobs, err := layerBlobs(src)
	if err != nil {
		return err
	}
	var imp, base, ext4, erofs []time.Duration
	var ext4Size, erofsSize int64
	_, erofsErr := exec.LookPath("mkfs.erofs")
	for i := range ociRounds {
		store, err := ociimage.Open(ctx, filepath.Join(dir, fmt.Sprintf("store-%d", i)), ociimage.Options{Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		var ds []ociimage.Digest
		d, err := timed(func() error {
			var err error
			ds, err = store.ImportDir(ctx, src, ociimage.ImportOptions{Tag: "bench/image:latest"})
			return err
		})
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		imp = append(imp, d)

		out := filepath.Join(dir, fmt.Sprintf("tar-%d", i))
		d, err = timed(func() error {
			if err := os.Mkdir(out, 0o755); err != nil {
				return err
			}
			for _, b := range blobs {
				if o, err := exec.CommandContext(ctx, "tar", "-xzf", b, "-C", out).CombinedOutput(); err != nil {
					return fmt.Errorf("tar -xzf: %w: %s", err, o)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		base = append(base, d)
		os.RemoveAll(out)

		var p string
		d, err = timed(func() error {
			var err error
			p, err = store.BlockImage(ctx, string(ds[0]))
			return err
		})
		if err != nil {
			return fmt.Errorf("ext4 image: %w", err)
		}
		ext4 = append(ext4, d)
		ext4Size = allocated(p)

		if erofsErr == nil {
			det, err := store.Inspect(ctx, string(ds[0]))
			if err != nil {
				return err
			}
			img := filepath.Join(dir, fmt.Sprintf("erofs-%d.img", i))
			d, err = timed(func() error {
				if o, err := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", img, det.RootFS).CombinedOutput(); err != nil {
					return fmt.Errorf("mkfs.erofs: %w: %s", err, o)
				}
				return nil
			})
			if err != nil {
				return err
			}
			erofs = append(erofs, d)
			erofsSize = allocated(img)
			os.Remove(img)
		}
		os.RemoveAll(filepath.Join(dir, fmt.Sprintf("store-%d", i)))
	}
	t.add(row{
		metric: fmt.Sprintf("image import: %d MiB in %d gzip layers", ociData>>20, ociLayers), value: median(imp),
		baseline: "tar -xzf of the layers", base: median(base), goal: 1.5,
		detail: fmt.Sprintf("verify + store blobs + safe unpack, medians of %d", ociRounds),
	})
	t.add(row{
		metric: "image block device: ext4 (mkfs.ext4 -d)", value: median(ext4),
		baseline: "image import", base: median(imp),
		detail: fmt.Sprintf("ext4 image of the unpacked image: %.1f MiB allocated", float64(ext4Size)/mib),
	})
	if len(erofs) > 0 {
		t.add(row{
			metric: "image block device: erofs (mkfs.erofs)", value: median(erofs),
			baseline: "ext4 build", base: median(ext4),
			detail: fmt.Sprintf("erofs image of the same tree: %.1f MiB against ext4's %.1f MiB", float64(erofsSize)/mib, float64(ext4Size)/mib),
		})
	}
	return nil
}

// writeBenchImage writes the generated image as an OCI layout at dir.
func writeBenchImage(dir string) error {
	rng := rand.New(rand.NewPCG(17, 17))
	var layers []v1.Layer
	per := ociData / ociLayers
	for l := range ociLayers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/", l), Typeflag: tar.TypeDir, Mode: 0o755})
		if l > 0 {
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/.wh.f0", l-1), Typeflag: tar.TypeReg, Mode: 0o644})
		}
		raw := make([]byte, per/ociFilesPerLay*3/4)
		for f := range ociFilesPerLay {
			for i := range raw {
				raw[i] = byte(rng.Uint32())
			}
			body := base64.StdEncoding.EncodeToString(raw)
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("l%d/f%d", l, f), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
			io.WriteString(tw, body)
		}
		tw.Close()
		b := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			return err
		}
		layers = append(layers, layer)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img)
}

// layerBlobs are the paths of the layout's layer blobs, in order.
func layerBlobs(dir string) ([]string, error) {
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, err
	}
	img, err := ii.Image(im.Manifests[0].Digest)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range m.Layers {
		out = append(out, filepath.Join(dir, "blobs", l.Digest.Algorithm, l.Digest.Hex))
	}
	return out, nil
}

// allocated is the disk space a file takes (its blocks, not its length).
func allocated(p string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
