package main

import (
	"context"
	"path"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/names"
)

// cpChunk is the size of CopyIn's and CopyInArchive's data messages.
const cpChunk = 256 << 10

func newCpCmd(g *globals) *cobra.Command {
	var vm string
	var archive bool
	cmd := &cobra.Command{
		Use:   "cp [--vm NAME] [-a] SRC DST",
		Short: "Copy files and directories between the host and a running container",
		Long: "cp copies a file or a directory tree into or out of a running container, one\n" +
			"side written CONTAINER:PATH with PATH absolute in the container, by docker cp's\n" +
			"rules: a DST that is a directory receives SRC under its own name (SRC/. : its\n" +
			"contents); one that does not exist becomes a copy of SRC; a file is replaced\n" +
			"by a file, never by a directory. - as SRC reads a tar stream from standard\n" +
			"input and extracts it into the directory DST; - as DST writes a directory as\n" +
			"a tar stream to standard output (a regular file: its bytes).\n\n" +
			"The container's side is its own view of its filesystem (its mounts: a tmpfs\n" +
			"on /tmp, its volumes), resolved inside its root: neither .. nor a symlink\n" +
			"there leads out. Symlinks are copied as links, never followed; names with\n" +
			"\"..\", absolute names, hard links to files outside the copy and device\n" +
			"nodes are refused. A copy is written beside its destination and renamed into\n" +
			"place once whole: one that fails changes nothing. Copied into a container,\n" +
			"files belong to its root user (-a: keep their owners); set-id bits are kept\n" +
			"only with -a by root. Copied out, they belong to you. A local path with a\n" +
			"colon in it is written ./a:b.",
		Example: "  cabin cp app.conf web:/etc/app/\n" +
			"  cabin cp ./site web:/srv/www\n" +
			"  cabin cp web:/var/log/app ./logs\n" +
			"  tar -C build -c . | cabin cp - web:/opt/app\n" +
			"  cabin cp web:/etc - | tar -t",
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
				} else if a == "" || strings.ContainsRune(a, 0) {
					return usagef("%q is not a path", a)
				}
			}
			return checkVMFlag(vm)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o := cpOptions{vm: vm, archive: archive}
			if id, p, ok := splitContainerPath(args[0]); ok {
				return copyOut(cmd, g, o, id, p, args[1])
			}
			id, p, _ := splitContainerPath(args[1])
			return copyIn(cmd, g, o, args[0], id, p)
		},
	}
	cmd.Flags().StringVar(&vm, "vm", "", "the VM the container is in")
	cmd.Flags().BoolVarP(&archive, "archive", "a", false, "keep owners (uid:gid) and, as root, set-id bits")
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
