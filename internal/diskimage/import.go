package diskimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// ImportRequest describes an image coming in.
type ImportRequest struct {
	Key
	Location Location
	// Format is the image's, said by the client: never probed.
	Format Format
	// Size is the image file's length; Data the bytes of data that will
	// come (for the free space check and progress). A file import reads
	// both from the file.
	Size, Data int64
	// Digest asks for the SHA-256 of what was imported, holes as zeros.
	Digest    bool
	VMType    int32
	HasVMType bool
	// Stall is how long Import waits on a source that gives nothing
	// before it fails the import; DefaultStall when zero.
	Stall time.Duration
}

// Source gives an imported image's data, in order of offset; io.EOF
// ends it.
type Source interface {
	Next() (Chunk, error)
}

func (r *ImportRequest) validate() error {
	if err := r.Key.Validate(); err != nil {
		return err
	}
	switch {
	case !r.Location.valid():
		return errdefs.InvalidArgument("storage_location", fmt.Sprintf("unknown location %d", r.Location))
	case !r.Format.valid():
		return errdefs.InvalidArgument("format", "must be raw or qcow2: cabin never guesses an image's format")
	case r.Size <= 0:
		return errdefs.InvalidArgument("size", "must be more than 0")
	case r.Size > maxSize:
		return errdefs.InvalidArgument("size", fmt.Sprintf("%d is more than cabin's limit of %d", r.Size, int64(maxSize)))
	case r.Data < 0 || r.Data > r.Size:
		return errdefs.InvalidArgument("data_bytes", fmt.Sprintf("%d is not between 0 and the size", r.Data))
	}
	return nil
}

// Import writes the image src gives under key and returns once it is in
// place: an operation of its own, registered (started is called with it
// before any byte is written) and cancelled with ctx (a client that goes
// away). The image is written under a temporary name, checked (format,
// no backing or data file, qemu-img check), and renamed into place only
// then; on any failure the temporary is removed.
//
// The source's calls are made as Export makes its sink's: the import ends
// when its operation does or when a call takes longer than req.Stall,
// even if the source blocks, the error then wrapping ErrBlocked; no call
// to the source starts after Import returned.
func (s *Store) Import(ctx context.Context, req ImportRequest, src Source, started func(*Op)) (Progress, error) {
	op, opCtx, err := s.beginImport(ctx, &req)
	if err != nil {
		return Progress{}, err
	}
	if started != nil {
		started(op)
	}
	g := newGuard(opCtx, req.Stall, "the sender gave no data")
	err = s.importInto(opCtx, op, req, func(emit func(Chunk) error) error {
		for {
			var c Chunk
			err := g.do(func() (err error) {
				c, err = src.Next()
				return err
			})
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := emit(c); err != nil {
				return err
			}
		}
	})
	err = g.end(op, err)
	return op.Progress(), err
}

// ImportFromFile starts importing the image in the file at path on this
// host, opened on c's behalf (see caller.Caller.Open), and returns the
// operation. The file is checked before anything is written, and the
// copy again before it is put in place (the file may change meanwhile).
func (s *Store) ImportFromFile(ctx context.Context, req ImportRequest, c *caller.Caller, path string) (*Op, error) {
	f, err := openHostFile("path", path, c)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	es, err := dataExtents(f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	req.Size, req.Data = st.Size(), extentBytes(es)
	if req.Size == 0 {
		f.Close()
		return nil, badImage("an empty file")
	}
	if _, err := s.validate(ctx, f, []*os.File{f}, "/dev/fd/3", req.Format, req.Size); err != nil {
		f.Close()
		return nil, err
	}
	op, opCtx, err := s.beginImport(s.ctx, &req)
	if err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		defer f.Close()
		err := s.importInto(opCtx, op, req, func(emit func(Chunk) error) error {
			return readChunks(opCtx, f, es, emit, nil)
		})
		op.finish(err)
	}()
	return op, nil
}

func (s *Store) beginImport(ctx context.Context, req *ImportRequest) (*Op, context.Context, error) {
	if err := req.validate(); err != nil {
		return nil, nil, err
	}
	if req.Format == FormatRaw && req.Size%512 != 0 {
		return nil, nil, badImage("a raw image of %d bytes: not a multiple of 512", req.Size)
	}
	if _, ok, err := s.find(req.Key); err != nil {
		return nil, nil, err
	} else if ok {
		return nil, nil, errdefs.Errorf(errdefs.ErrAlreadyExists, "image %s exists", req.Key)
	}
	dir := s.dir(req.Owner, req.Location)
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		return nil, nil, fmt.Errorf("disk images: %w", err)
	}
	if err := s.needSpace(dir.Path(), req.Data); err != nil {
		return nil, nil, err
	}
	return s.begin(ctx, OpImport, req.Key, nil)
}

// importInto writes what feed emits into a temporary, checks it and puts
// it in place.
func (s *Store) importInto(ctx context.Context, op *Op, req ImportRequest, feed func(emit func(Chunk) error) error) (err error) {
	dir := s.dir(req.Owner, req.Location)
	tmp := dir.Temp(op.UUID())
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return spaceOr(fmt.Errorf("import: %w", err))
	}
	placed := false
	defer func() {
		f.Close()
		if !placed {
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(req.Size); err != nil {
		return spaceOr(fmt.Errorf("import: %w", err))
	}
	w := chunkWriter{f: f, size: req.Size}
	dg := newDigester(req.Digest)
	first := true
	err = feed(func(c Chunk) error {
		if ctx.Err() != nil {
			return ErrCancelled
		}
		if first && req.Format == FormatQcow2 {
			// Refused before a byte of it is written.
			if c.Offset != 0 || len(c.Data) < qcow2HeaderLen {
				return badImage("a qcow2 must start with its header")
			}
			if _, err := checkQcow2Header(c.Data); err != nil {
				return err
			}
		}
		first = false
		if err := w.write(c); err != nil {
			return err
		}
		dg.add(c.Offset, c.Data)
		if req.Data > 0 {
			op.setPercent(uint32(w.written * 90 / req.Data))
		}
		return nil
	})
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ErrCancelled, ctx.Err())
	}
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return spaceOr(fmt.Errorf("import: %w", err))
	}
	if _, err := s.validate(ctx, f, nil, tmp, req.Format, req.Size); err != nil {
		return err
	}
	op.setPercent(95)
	m := meta{UserChosenSize: true, VMType: req.VMType, HasVMType: req.HasVMType}
	if req.Format == FormatRaw && s.isExt(ctx, tmp) {
		m.Filesystem = FilesystemExt4
	}
	if err := s.place(dir, op.UUID(), req.Name, tmp, dir.Image(req.Name, req.Format.ext()), m); err != nil {
		return err
	}
	placed = true
	op.setDigest(dg.sum(req.Size))
	s.log.Info("disk image imported", "image", req.Key.String(), "format", req.Format, "size", req.Size, "data", w.written)
	return nil
}
