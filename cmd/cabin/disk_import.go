package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/diskimage"
)

func newDiskImportCmd(g *globals) *cobra.Command {
	var (
		format, location       string
		digest, onHost, asJSON bool
	)
	cmd := &cobra.Command{
		Use: "import NAME FILE --format raw|qcow2 [--location root|pluginvm] [--digest] [--on-host] [--json]",
		Example: "  cabin disk import data data.img --format raw\n" +
			"  cabin disk import data /srv/backup/data.img --format raw --on-host",
		Short: "Import a disk image from a file",
		Long: "import makes the disk image NAME from FILE, an image in the --format given\n" +
			"(cabind never guesses it). cabind checks it (a qcow2 with a backing or data file\n" +
			"is refused), writes it under a temporary name and puts it in place only once\n" +
			"complete. cabin reads FILE and sends its data, holes left out; with --on-host,\n" +
			"cabind reads FILE (an absolute path on its host that you may read) itself.\n" +
			"--digest prints the SHA-256 of the imported bytes.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes a disk name and a file", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if format == "" {
				return usagef("%s needs --format raw or qcow2: cabin never guesses an image's format", verb(cmd))
			}
			f, err := diskFormat(format)
			if err != nil {
				return err
			}
			loc, err := storageLocation(location)
			if err != nil {
				return err
			}
			h := &cabinv1.ImportDiskHeader{
				Request: &concierge.ImportDiskImageRequest{CryptohomeId: g.owner, VmName: args[0], StorageLocation: loc},
				Format:  f, Sha256: digest,
			}
			return runDiskImport(cmd, g, h, args[1], onHost, asJSON)
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "the image's format: raw or qcow2")
	cmd.Flags().StringVar(&location, "location", "root", "storage location: root or pluginvm")
	cmd.Flags().BoolVar(&digest, "digest", false, "print the SHA-256 of the imported bytes")
	cmd.Flags().BoolVar(&onHost, "on-host", false, "have cabind read FILE on its host")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the outcome (cabin.v1.DiskOutcome) as JSON")
	return cmd
}

func runDiskImport(cmd *cobra.Command, g *globals, h *cabinv1.ImportDiskHeader, file string, onHost, asJSON bool) error {
	name := h.GetRequest().GetVmName()
	path, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	var in *os.File
	if onHost {
		h.Path = path
	} else {
		in, err = os.Open(path)
		if err != nil {
			return fmt.Errorf("import disk %s: %w", name, err)
		}
		defer in.Close()
		st, err := in.Stat()
		if err != nil {
			return err
		}
		data, err := diskimage.DataBytes(in, st.Size())
		if err != nil {
			return fmt.Errorf("import disk %s: %w", name, err)
		}
		h.Size, h.DataBytes = uint64(st.Size()), uint64(data)
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	stream, err := cabinv1.NewDisksClient(conn).Import(ctx)
	if err != nil {
		return fmt.Errorf("import disk %s: %w", name, err)
	}
	if err := stream.Send(&cabinv1.ImportDiskMessage{Message: &cabinv1.ImportDiskMessage_Header{Header: h}}); err != nil {
		return fmt.Errorf("import disk %s: %w", name, err)
	}
	p := newProgress(cmd.ErrOrStderr(), "import "+name, asJSON)
	sent := make(chan error, 1)
	if in != nil {
		go func() {
			err := diskimage.ReadSparse(ctx, in, int64(h.GetSize()), func(c diskimage.Chunk) error {
				return stream.Send(&cabinv1.ImportDiskMessage{Message: &cabinv1.ImportDiskMessage_Chunk{Chunk: &cabinv1.DiskChunk{
					Offset: uint64(c.Offset), Data: c.Data,
				}}})
			}, nil)
			if err == nil {
				err = stream.CloseSend()
			}
			sent <- err
		}()
	} else {
		stream.CloseSend()
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("import disk %s: cabind ended the import without its outcome", name)
		}
		if err != nil {
			return fmt.Errorf("import disk %s: %w", name, err)
		}
		switch r := r.GetReply().(type) {
		case *cabinv1.ImportDiskReply_Started:
			if err := operationStarted(cmd.ErrOrStderr(), "import disk "+name, r.Started, asJSON); err != nil {
				return err
			}
		case *cabinv1.ImportDiskReply_Progress:
			p.set(int(r.Progress.GetProgress()))
		case *cabinv1.ImportDiskReply_Done:
			st := r.Done.GetStatus()
			if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_CREATED {
				return outcomeError("import disk "+name, st)
			}
			if in != nil {
				if err := <-sent; err != nil {
					return fmt.Errorf("import disk %s: %w", name, err)
				}
			}
			p.done()
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r.Done)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s from %s\n", name, path)
			if d := r.Done.GetSha256(); d != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "sha256 %s\n", d)
			}
			return nil
		}
	}
}
