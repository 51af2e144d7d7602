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
	"github.com/cabinvm/cabin/internal/names"
)

// cpChunk is the size of CopyIn's data messages.
const cpChunk = 256 << 10

func newCpCmd(g *globals) *cobra.Command {
	var vm string
	cmd := &cobra.Command{
		Use:   "cp [--vm NAME] SRC DST",
		Short: "Copy a file between the host and a running container",
		Long: "cp copies one regular file into or out of a running container, one side\n" +
			"written CONTAINER:PATH with PATH absolute in the container. The container's\n" +
			"side is its own view of its filesystem (its mounts: a tmpfs on /tmp, its\n" +
			"volumes), resolved inside its root: neither .. nor a symlink there leads\n" +
			"out. Into a container: a PATH ending in / is a directory the file goes into\n" +
			"under its own name; the file is written whole under a temporary name and\n" +
			"renamed into place, with the local file's permission bits. Out of one: a\n" +
			"DST that is a directory gets the file under its name; - writes it to\n" +
			"standard output. A local path with a colon in it is written ./a:b.",
		Example: "  cabin cp app.conf web:/etc/app/\n" +
			"  cabin cp web:/tmp/report.txt .\n" +
			"  cabin cp web:/var/log/app.log - | tail",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes SRC and DST, got %d arguments", verb(cmd), len(args))
			}
			_, _, srcIn := splitContainerPath(args[0])
			_, _, dstIn := splitContainerPath(args[1])
			switch {
			case srcIn && dstIn:
				return usagef("%s copies between the host and a container, not between containers", verb(cmd))
			case !srcIn && !dstIn:
				return usagef("%s: one of SRC and DST must be CONTAINER:PATH", verb(cmd))
			}
			for _, a := range args {
				if id, p, ok := splitContainerPath(a); ok {
					if err := checkContainerArg(id); err != nil {
						return err
					}
					if !path.IsAbs(p) || strings.ContainsRune(p, 0) {
						return usagef("%q: the path in the container must be absolute", a)
					}
				}
			}
			return checkVMFlag(vm)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if id, p, ok := splitContainerPath(args[0]); ok {
				return copyOut(cmd, g, vm, id, p, args[1])
			}
			id, p, _ := splitContainerPath(args[1])
			return copyIn(cmd, g, vm, args[0], id, p)
		},
	}
	cmd.Flags().StringVar(&vm, "vm", "", "the VM the container is in")
	return cmd
}

// splitContainerPath splits CONTAINER:PATH. A path starting with / or .
// is local whatever it holds, as is one whose part before the colon
// cannot be a container id.
func splitContainerPath(s string) (id, p string, ok bool) {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return "", "", false
	}
	id, p, ok = strings.Cut(s, ":")
	if !ok || names.Check("container", id, names.MaxContainer) != nil {
		return "", "", false
	}
	return id, p, true
}

// copyIn copies the local file src to p in container id.
func copyIn(cmd *cobra.Command, g *globals, vm, src, id, p string) error {
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

// copyOut copies p in container id to dst, a local file or directory, or
// standard output for -.
func copyOut(cmd *cobra.Command, g *globals, vm, id, p, dst string) error {
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

// withContainer finds container id and calls f with a context that
// reaches its VM.
func withContainer(cmd *cobra.Command, g *globals, vm, id string, f func(context.Context, *grpc.ClientConn, *containersv1.Container) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	c, err := findContainer(cmd.Context(), conn, g, vm, id)
	if err != nil {
		return err
	}
	return f(vmContext(cmd.Context(), g, c.GetVm()), conn, c)
}
