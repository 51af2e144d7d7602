package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImageImportCmd(g *globals) *cobra.Command {
	var (
		tag            string
		onHost, asJSON bool
	)
	cmd := &cobra.Command{
		Use: "import [--tag NAME] [--on-host] [--json] FILE|DIR|-",
		Example: "  cabin image import busybox.tar --tag busybox:latest\n" +
			"  docker save alpine | cabin image import -",
		Short: "Import an OCI image layout or a docker save tarball",
		Long: "import adds the images of FILE (an OCI image layout tar or a `docker save`\n" +
			"tarball), of DIR (an OCI image layout directory) or of standard input (-) to\n" +
			"cabind's image store, each checked against its digests and unpacked once.\n" +
			"cabin sends the data; with --on-host, cabind reads FILE (an absolute path on\n" +
			"its host that you may read) itself. --tag names the image besides the names\n" +
			"the source gives it. One line per image: digest and tags.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s takes one file, directory or -", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImageImport(cmd, g, args[0], &cabinv1.ImportOciImageHeader{Tag: tag}, onHost, asJSON)
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "", "a name for the imported image")
	cmd.Flags().BoolVar(&onHost, "on-host", false, "have cabind read FILE on its host")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the reply (cabin.v1.ImportOciImageReply) as JSON")
	return cmd
}

func runImageImport(cmd *cobra.Command, g *globals, src string, h *cabinv1.ImportOciImageHeader, onHost, asJSON bool) error {
	var body io.Reader
	switch {
	case onHost:
		if src == "-" {
			return usagef("%s: --on-host needs a file, not standard input", verb(cmd))
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		h.Path = abs
	case src == "-":
		body = cmd.InOrStdin()
	default:
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("import image: %w", err)
		}
		if st.IsDir() {
			body = tarStream(src)
		} else {
			f, err := os.Open(src)
			if err != nil {
				return fmt.Errorf("import image: %w", err)
			}
			defer f.Close()
			body = f
		}
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := cabinv1.NewOciImagesClient(conn).Import(cmd.Context())
	if err != nil {
		return fmt.Errorf("import image: %w", err)
	}
	if err := stream.Send(&cabinv1.ImportOciImageMessage{Message: &cabinv1.ImportOciImageMessage_Header{Header: h}}); err != nil {
		return importReply(cmd, stream, asJSON)
	}
	if body != nil {
		buf := make([]byte, 1<<20)
		for {
			n, rerr := body.Read(buf)
			if n > 0 {
				chunk := &cabinv1.ImportOciImageMessage{Message: &cabinv1.ImportOciImageMessage_Chunk{Chunk: buf[:n]}}
				if err := stream.Send(chunk); err != nil {
					break // the daemon ended the call: its status says why
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return fmt.Errorf("import image: read %s: %w", src, rerr)
			}
		}
	}
	return importReply(cmd, stream, asJSON)
}

func importReply(cmd *cobra.Command, stream interface {
	CloseAndRecv() (*cabinv1.ImportOciImageReply, error)
}, asJSON bool) error {
	reply, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("import image: %w", err)
	}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), reply)
	}
	for _, img := range reply.GetImages() {
		fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", img.GetDigest(), strings.Join(img.GetTags(), " "))
	}
	return nil
}

// tarStream is a tar of the tree at dir, written as it is read.
func tarStream(dir string) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.AddFS(os.DirFS(dir))
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}
