package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
)

// Single regular files through CopyIn and CopyOut, the calls agents had
// before CopyInArchive and CopyOutArchive: used with a VM whose agent
// answers those UNIMPLEMENTED (VMs outlive a CLI upgrade).

// copyFileIn copies the local file src to p in container id with
// CopyIn: what an agent without CopyInArchive does.
func copyFileIn(cmd *cobra.Command, g *globals, vm, src, id, p string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file: cp copies one file", src)
	}
	if strings.HasSuffix(p, "/") {
		p += filepath.Base(src)
	}
	return withContainer(cmd, g, vm, id, func(ctx context.Context, conn *grpc.ClientConn, c *containersv1.Container) error {
		stream, err := containersv1.NewContainersClient(conn).CopyIn(ctx)
		if err != nil {
			return err
		}
		err = stream.Send(&containersv1.CopyInRequest{Kind: &containersv1.CopyInRequest_Header{Header: &containersv1.CopyInHeader{
			ContainerId: id, Path: p, Mode: uint32(st.Mode().Perm()), Size: st.Size(),
		}}})
		buf := make([]byte, cpChunk)
		for err == nil {
			var n int
			n, err = f.Read(buf)
			if n > 0 {
				if serr := stream.Send(&containersv1.CopyInRequest{Kind: &containersv1.CopyInRequest_Data{Data: buf[:n]}}); serr != nil {
					err = serr
				}
			}
		}
		if !errors.Is(err, io.EOF) {
			// A send failed: the answer says why; a read failed: ours.
			if _, rerr := stream.CloseAndRecv(); rerr != nil {
				return fmt.Errorf("copy to %s:%s in %s: %w", id, p, c.GetVm(), rerr)
			}
			return fmt.Errorf("read %s: %w", src, err)
		}
		if _, err := stream.CloseAndRecv(); err != nil {
			return fmt.Errorf("copy to %s:%s in %s: %w", id, p, c.GetVm(), err)
		}
		return nil
	})
}

// copyFileOut copies p in container id to dst, a local file or
// directory, or standard output for -, with CopyOut: what an agent
// without CopyOutArchive does.
func copyFileOut(cmd *cobra.Command, g *globals, vm, id, p, dst string) error {
	return withContainer(cmd, g, vm, id, func(ctx context.Context, conn *grpc.ClientConn, c *containersv1.Container) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := containersv1.NewContainersClient(conn).CopyOut(ctx, &containersv1.CopyOutRequest{ContainerId: id, Path: p})
		if err != nil {
			return err
		}
		first, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("copy %s:%s in %s: %w", id, p, c.GetVm(), err)
		}
		h := first.GetHeader()
		if h == nil {
			return fmt.Errorf("copy %s:%s in %s: the agent sent no header", id, p, c.GetVm())
		}
		recv := func(w io.Writer) (int64, error) {
			var n int64
			for {
				m, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return n, nil
				}
				if err != nil {
					return n, fmt.Errorf("copy %s:%s in %s: %w", id, p, c.GetVm(), err)
				}
				k, err := w.Write(m.GetData())
				n += int64(k)
				if err != nil {
					return n, err
				}
			}
		}
		if dst == "-" {
			_, err := recv(cmd.OutOrStdout())
			return err
		}
		if st, err := os.Stat(dst); err == nil && st.IsDir() {
			dst = filepath.Join(dst, path.Base(p))
		}
		// Written beside dst and renamed over it once whole.
		tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".cabin-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		n, err := recv(tmp)
		if err == nil && n != h.GetSize() {
			err = fmt.Errorf("copy %s:%s in %s: %d bytes came of %d", id, p, c.GetVm(), n, h.GetSize())
		}
		if err == nil {
			err = tmp.Chmod(os.FileMode(h.GetMode()).Perm())
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return os.Rename(tmp.Name(), dst)
	})
}
