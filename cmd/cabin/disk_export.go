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
)

func newDiskExportCmd(g *globals) *cobra.Command {
	var digest, force, onHost, asJSON bool
	cmd := &cobra.Command{
		Use: "export NAME FILE [--digest] [--force] [--on-host] [--json]",
		Example: "  cabin disk export data data.img --digest\n" +
			"  cabin disk export data /srv/backup/data.img --on-host",
		Short: "Export a disk image to a file",
		Long: "export writes the disk image NAME, in its own format, to FILE, which must not\n" +
			"exist. Holes and blocks of zeros stay holes. The bytes come on cabind's stream\n" +
			"and cabin writes FILE; with --on-host, cabind writes FILE (an absolute path on\n" +
			"its host, where you may create files) itself. --digest prints the SHA-256 of\n" +
			"the image's bytes; --force exports the image of a running VM. Interrupted or\n" +
			"failed, it leaves no FILE behind.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes a disk name and a file", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDiskExport(cmd, g, args[0], args[1], digest, force, onHost, asJSON)
		},
	}
	cmd.Flags().BoolVar(&digest, "digest", false, "print the SHA-256 of the exported bytes")
	cmd.Flags().BoolVar(&force, "force", false, "export the image of a running VM")
	cmd.Flags().BoolVar(&onHost, "on-host", false, "have cabind write FILE on its host")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the outcome (cabin.v1.DiskOutcome) as JSON")
	return cmd
}

func runDiskExport(cmd *cobra.Command, g *globals, name, file string, digest, force, onHost, asJSON bool) (err error) {
	path, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	req := &cabinv1.ExportDiskRequest{Request: &concierge.ExportDiskImageRequest{
		CryptohomeId: g.owner, VmName: name, GenerateSha256Digest: digest, Force: force,
	}}
	var out *os.File
	if onHost {
		req.Path = path
	} else {
		out, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("export disk %s: %w", name, err)
		}
		defer func() {
			out.Close()
			if err != nil {
				os.Remove(path)
			}
		}()
	}
	stream, err := cabinv1.NewDisksClient(conn).Export(cmd.Context(), req)
	if err != nil {
		return fmt.Errorf("export disk %s: %w", name, err)
	}
	p := newProgress(cmd.ErrOrStderr(), "export "+name, asJSON)
	var header *cabinv1.DiskHeader
	var got uint64
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("export disk %s: cabind ended the export without its outcome", name)
		}
		if err != nil {
			return fmt.Errorf("export disk %s: %w", name, err)
		}
		switch r := r.GetReply().(type) {
		case *cabinv1.ExportDiskReply_Started:
			if err := operationStarted(cmd.ErrOrStderr(), "export disk "+name, r.Started, asJSON); err != nil {
				return err
			}
		case *cabinv1.ExportDiskReply_Header:
			header = r.Header
			if err := out.Truncate(int64(header.GetSize())); err != nil {
				return fmt.Errorf("export disk %s: %w", name, err)
			}
		case *cabinv1.ExportDiskReply_Chunk:
			c := r.Chunk
			if header == nil || c.GetOffset()+uint64(len(c.GetData())) > header.GetSize() {
				return fmt.Errorf("export disk %s: cabind sent data outside the image", name)
			}
			if _, err := out.WriteAt(c.GetData(), int64(c.GetOffset())); err != nil {
				return fmt.Errorf("export disk %s: %w", name, err)
			}
			got += uint64(len(c.GetData()))
			if d := header.GetDataBytes(); d > 0 {
				p.set(int(got * 100 / d))
			}
		case *cabinv1.ExportDiskReply_Progress:
			p.set(int(r.Progress.GetProgress()))
		case *cabinv1.ExportDiskReply_Done:
			st := r.Done.GetStatus()
			if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_CREATED {
				return outcomeError("export disk "+name, st)
			}
			if out != nil {
				if err := out.Sync(); err != nil {
					return fmt.Errorf("export disk %s: %w", name, err)
				}
			}
			p.done()
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r.Done)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "exported %s to %s\n", name, path)
			if d := r.Done.GetSha256(); d != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "sha256 %s\n", d)
			}
			return nil
		}
	}
}
