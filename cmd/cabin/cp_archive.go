package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/tarcopy"
)

// cpOptions are cp's flags.
type cpOptions struct {
	vm      string
	archive bool
}

// keepIDs tells whether owners and set-id bits are kept: -a, and for a
// copy out, only where this process may give files away (root).
func (o cpOptions) keepIDs() bool { return o.archive && os.Geteuid() == 0 }

// contentsOnly tells whether a source path asks for a directory's
// contents (docker cp's SRC/.).
func contentsOnly(p string) bool { return p == "." || strings.HasSuffix(p, "/.") }

// errOldAgent is an agent that answers the archive calls UNIMPLEMENTED.
var errOldAgent = errors.New("the VM's agent predates cabin cp of directories: restart the VM for them")

// copyIn copies src, a local file or directory, or a tar stream on
// standard input for -, to p in container id. Local files are read by
// this process, as the user who runs it.
func copyIn(cmd *cobra.Command, g *globals, o cpOptions, src, id, p string) error {
	h := &containersv1.CopyInArchiveHeader{ContainerId: id, Path: p, Archive: o.archive, KeepSetId: o.keepIDs()}
	var body func(io.Writer) error
	regular := false
	if src == "-" {
		body = func(w io.Writer) error {
			_, err := io.Copy(w, cmd.InOrStdin())
			return err
		}
	} else {
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		if abs == "/" {
			return usagef("cp copies no whole root directory: name what is in it")
		}
		st, err := os.Lstat(abs)
		if err != nil {
			return err
		}
		regular = st.Mode().IsRegular()
		if contentsOnly(src) && !st.IsDir() {
			return fmt.Errorf("%s is not a directory", src)
		}
		parent, err := os.Open(filepath.Dir(abs))
		if err != nil {
			return err
		}
		defer parent.Close()
		name := filepath.Base(abs)
		h.SourceName, h.ContentsOnly = name, contentsOnly(src)
		body = func(w io.Writer) error {
			_, err := tarcopy.Write(w, parent, name, tarcopy.ArchiveOptions{Limits: tarcopy.DefaultLimits})
			return err
		}
	}
	err := withContainer(cmd, g, o.vm, id, func(ctx context.Context, conn *grpc.ClientConn, c *containersv1.Container) error {
		return sendArchive(ctx, conn, h, body, c.GetVm())
	})
	if errors.Is(err, errOldAgent) && regular && !o.archive {
		return copyFileIn(cmd, g, o.vm, src, id, p)
	}
	return err
}

// sendArchive sends the header and what body writes.
func sendArchive(ctx context.Context, conn *grpc.ClientConn, h *containersv1.CopyInArchiveHeader, body func(io.Writer) error, vm string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := containersv1.NewContainersClient(conn).CopyInArchive(ctx)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("copy to %s:%s in %s", h.GetContainerId(), h.GetPath(), vm)
	if err := stream.Send(&containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Header{Header: h}}); err != nil {
		return answer(stream, what, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(body(pw)) }()
	defer pr.Close()
	buf := make([]byte, cpChunk)
	for {
		n, rerr := io.ReadFull(pr, buf)
		if n > 0 {
			if err := stream.Send(&containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Data{Data: buf[:n]}}); err != nil {
				// The agent answered (refused) before the end.
				return answer(stream, what, err)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			// Ours: the agent must not take what came as the whole.
			cancel()
			return rerr
		}
	}
	_, err = stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("%s: %w", what, agentError(err))
	}
	return nil
}

// answer is the agent's answer to a stream it ended early.
func answer(stream containersv1.Containers_CopyInArchiveClient, what string, sendErr error) error {
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("%s: %w", what, agentError(err))
	}
	return fmt.Errorf("%s: %w", what, sendErr)
}

// agentError says so when the agent lacks the archive calls.
func agentError(err error) error {
	if status.Code(err) == codes.Unimplemented {
		return errOldAgent
	}
	return err
}

// archiveReader reads CopyOutArchive's messages as a byte stream.
type archiveReader struct {
	stream containersv1.Containers_CopyOutArchiveClient
	buf    []byte
}

func (r *archiveReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		m, err := r.stream.Recv()
		if err != nil {
			return 0, err
		}
		r.buf = m.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// copyOut copies p in container id to dst, a local path, or standard
// output for -. Local files are written by this process, as the user who
// runs it.
func copyOut(cmd *cobra.Command, g *globals, o cpOptions, id, p, dst string) error {
	err := withContainer(cmd, g, o.vm, id, func(ctx context.Context, conn *grpc.ClientConn, c *containersv1.Container) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		what := fmt.Sprintf("copy %s:%s in %s", id, p, c.GetVm())
		stream, err := containersv1.NewContainersClient(conn).CopyOutArchive(ctx, &containersv1.CopyOutArchiveRequest{ContainerId: id, Path: p})
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		first, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("%s: %w", what, agentError(err))
		}
		r := &archiveReader{stream: stream, buf: first.GetData()}
		if dst == "-" {
			err = writeOut(cmd.OutOrStdout(), r)
		} else {
			err = extractOut(cmd, o, r, p, dst)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
	if errors.Is(err, errOldAgent) && !o.archive {
		return copyFileOut(cmd, g, o.vm, id, p, dst)
	}
	return err
}

// writeOut writes the archive to w, or, when it holds one regular file,
// that file's bytes.
func writeOut(w io.Writer, r io.Reader) error {
	br := bufio.NewReaderSize(r, cpChunk)
	var head bytes.Buffer
	tr := tar.NewReader(io.TeeReader(br, &head))
	h, err := tr.Next()
	if err != nil {
		return fmt.Errorf("read the archive: %w", err)
	}
	if h.Typeflag == tar.TypeReg {
		if _, err := io.Copy(w, tr); err != nil {
			return err
		}
		// The rest (the archive's end) says whether all went well.
		_, err := io.Copy(io.Discard, br)
		return err
	}
	if _, err := w.Write(head.Bytes()); err != nil {
		return err
	}
	_, err = io.Copy(w, br)
	return err
}

// extractOut extracts the archive at dst by docker cp's rules.
func extractOut(cmd *cobra.Command, o cpOptions, r io.Reader, p, dst string) error {
	ar, err := tarcopy.NewReader(r)
	if err != nil {
		return err
	}
	first := ar.First()
	dest := tarcopy.Dest{TrailingSlash: strings.HasSuffix(dst, "/")}
	clean := filepath.Clean(dst)
	if st, err := os.Stat(clean); err == nil {
		dest.Exists, dest.IsDir = true, st.IsDir()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	place, err := tarcopy.Place(dest, first.Typeflag == tar.TypeDir, contentsOnly(p))
	if err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	at := clean
	if place == tarcopy.AsDest {
		at = filepath.Dir(clean)
	}
	d, err := os.Open(at)
	if err != nil {
		return err
	}
	defer d.Close()
	opts := tarcopy.Options{Limits: tarcopy.DefaultLimits, Rename: tarcopy.For(place, first.Name, filepath.Base(clean)), SkipDevices: true}
	if o.keepIDs() {
		opts.KeepSetID = true
		opts.Owner = func(h *tar.Header) (int, int, error) { return h.Uid, h.Gid, nil }
	}
	res, err := ar.Extract(d, opts)
	if err != nil {
		return err
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "cabin cp: %d device nodes not copied (%s)\n", len(res.Skipped), strings.Join(res.Skipped[:min(len(res.Skipped), 5)], ", "))
	}
	return nil
}
