package diskimage

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/caller"
	"github.com/cabinvm/cabin/internal/errdefs"
)

// ExportRequest asks for an image's bytes.
type ExportRequest struct {
	Key
	// Force exports an image its VM holds (the VM may be writing it).
	Force bool
	// Digest asks for the SHA-256 of the exported bytes, holes as zeros.
	Digest bool
	// Stall is how long Export waits on a sink that takes nothing before
	// it fails the export; DefaultStall when zero.
	Stall time.Duration
}

// Sink takes an exported image: Begin once, then its data in order of
// offset, leaving out holes and blocks of zeros.
type Sink interface {
	// Begin is told the image's format, its size, and how many bytes of
	// data regions follow (at most; zero blocks among them are left out).
	Begin(f Format, size, data int64) error
	Write(Chunk) error
}

// ExportResult is what an export sent.
type ExportResult struct {
	Format Format
	Size   int64
	Digest string
}

// Export sends key's image to sink and returns once it is sent: an
// operation of its own, registered (started is called with it before any
// byte goes out) and cancelled with ctx (a client that goes away).
//
// The sink's calls are made on a goroutine of their own, so that the
// export ends when its operation does (Op.Cancel, ctx, the store
// closing) or when a call takes longer than req.Stall, even if the sink
// blocks: a receiver that stopped reading cannot hold the image. The
// error then wraps ErrBlocked (see there). No call to the sink starts
// after Export returned.
func (s *Store) Export(ctx context.Context, req ExportRequest, sink Sink, started func(*Op)) (ExportResult, error) {
	op, opCtx, err := s.beginExport(ctx, req)
	if err != nil {
		return ExportResult{}, err
	}
	if started != nil {
		started(op)
	}
	g := newGuard(opCtx, req.Stall, "the receiver took no data")
	res, err := s.export(opCtx, op, req, guardedSink{sink: sink, g: g})
	return res, g.end(op, err)
}

// ExportToFile starts exporting key's image to a new file at path on
// this host, created on c's behalf (see createHostFile), and returns the
// operation. A failed or cancelled export removes the file.
func (s *Store) ExportToFile(ctx context.Context, req ExportRequest, c *caller.Caller, path string) (*Op, error) {
	if err := req.Key.Validate(); err != nil {
		return nil, err
	}
	if _, ok, err := s.find(req.Key); err != nil {
		return nil, err
	} else if !ok {
		return nil, errdefs.Errorf(errdefs.ErrNotFound, "image %s does not exist", req.Key)
	}
	f, partial, err := createHostFile("path", path, c)
	if err != nil {
		return nil, err
	}
	op, opCtx, err := s.beginExport(s.ctx, req)
	if err != nil {
		f.Close()
		removePartial(partial)
		return nil, err
	}
	if err := op.setPartial(partial); err != nil {
		f.Close()
		removePartial(partial)
		op.finish(err)
		return nil, err
	}
	go func() {
		sink := &fileSink{f: f}
		_, err := s.export(opCtx, op, req, sink)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		if err != nil {
			if rerr := removePartial(partial); rerr != nil {
				s.log.Warn("export: remove the partial file", "command_uuid", op.UUID(), "err", rerr)
			}
		}
		op.finish(spaceOr(err))
	}()
	return op, nil
}

func (s *Store) beginExport(ctx context.Context, req ExportRequest) (*Op, context.Context, error) {
	if err := req.Key.Validate(); err != nil {
		return nil, nil, err
	}
	if _, ok, err := s.find(req.Key); err != nil {
		return nil, nil, err
	} else if !ok {
		return nil, nil, errdefs.Errorf(errdefs.ErrNotFound, "image %s does not exist", req.Key)
	}
	return s.begin(ctx, OpExport, req.Key, func(held bool) error {
		if held && !req.Force {
			return errdefs.Errorf(errdefs.ErrFailedPrecondition, "image %s: its VM runs; export it with force, or stop the VM", req.Key)
		}
		return nil
	})
}

func (s *Store) export(ctx context.Context, op *Op, req ExportRequest, sink Sink) (ExportResult, error) {
	found, ok, err := s.find(req.Key)
	if err != nil {
		return ExportResult{}, err
	}
	if !ok {
		return ExportResult{}, errdefs.Errorf(errdefs.ErrNotFound, "image %s does not exist", req.Key)
	}
	src, err := os.Open(found.path)
	if err != nil {
		return ExportResult{}, fmt.Errorf("export: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return ExportResult{}, err
	}
	size := st.Size()
	// Checked as an import would be: what leaves is an image of its
	// format with nothing outside it.
	if _, err := s.validate(ctx, src, []*os.File{src}, "/dev/fd/3", found.format, size); err != nil {
		return ExportResult{}, err
	}
	es, err := dataExtents(src, size)
	if err != nil {
		return ExportResult{}, err
	}
	data := extentBytes(es)
	if err := sink.Begin(found.format, size, data); err != nil {
		return ExportResult{}, err
	}
	dg := newDigester(req.Digest)
	err = readChunks(ctx, src, es, func(c Chunk) error {
		dg.add(c.Offset, c.Data)
		return sink.Write(c)
	}, func(read int64) {
		if data > 0 {
			op.setPercent(uint32(read * 100 / data))
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			return ExportResult{}, fmt.Errorf("%w (%w)", ErrCancelled, ctx.Err())
		}
		return ExportResult{}, err
	}
	res := ExportResult{Format: found.format, Size: size, Digest: dg.sum(size)}
	op.setDigest(res.Digest)
	return res, nil
}

// fileSink writes an export into a file on this host.
type fileSink struct {
	f *os.File
	w chunkWriter
}

func (s *fileSink) Begin(_ Format, size, data int64) error {
	free, err := freeSpaceFd(int(s.f.Fd()))
	if err != nil {
		return err
	}
	if data+spaceMargin > free {
		return notEnoughSpace("the export needs up to %d bytes; %d free where it goes", data, free)
	}
	if err := unix.Ftruncate(int(s.f.Fd()), size); err != nil {
		return spaceOr(fmt.Errorf("export: %w", err))
	}
	s.w = chunkWriter{f: s.f, size: size}
	return nil
}

func (s *fileSink) Write(c Chunk) error { return s.w.write(c) }

// guardedSink makes the sink's calls through a guard.
type guardedSink struct {
	sink Sink
	g    *guard
}

func (s guardedSink) Begin(f Format, size, data int64) error {
	return s.g.do(func() error { return s.sink.Begin(f, size, data) })
}

func (s guardedSink) Write(c Chunk) error {
	return s.g.do(func() error { return s.sink.Write(c) })
}
