package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImageListCmd(g *globals) *cobra.Command {
	var asJSON bool
	var lf listFormat
	cmd := &cobra.Command{
		Use:     "ls [--json | -q | --format TEMPLATE]",
		Aliases: []string{"list"},
		Short:   "List the OCI images in cabind's store",
		Long: "ls shows each image of the store, a line per tag (an untagged image once):\n" +
			"name, short digest, size of its blobs, size unpacked, and when it was created.\n" +
			"-q prints the digests only; --format runs a Go template on each image.",
		Example: "  cabin image ls --format '{{.Tags}} {{.Digest}}'",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			return lf.check(asJSON)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := cabinv1.NewOciImagesClient(conn).List(cmd.Context(), &cabinv1.ListOciImagesRequest{})
			if err != nil {
				return fmt.Errorf("list images: %w", err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			if lf.set() {
				return writeFormatted(cmd.OutOrStdout(), lf, resp.GetImages(), (*cabinv1.OciImage).GetDigest)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tSIZE\tUNPACKED\tCREATED")
			for _, img := range resp.GetImages() {
				tags := img.GetTags()
				if len(tags) == 0 {
					tags = []string{"<none>"}
				}
				created := "-"
				if img.GetCreated() != nil {
					created = img.GetCreated().AsTime().UTC().Format(time.DateTime)
				}
				for _, t := range tags {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t, shortDigest(img.GetDigest()), formatBytes(img.GetSize()),
						formatBytes(img.GetUnpackedSize()), created)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print cabin.v1.ListOciImagesResponse as JSON")
	lf.add(cmd.Flags())
	return cmd
}

// shortDigest is the first 12 hex digits of a digest, as Docker shows ids.
func shortDigest(d string) string {
	h := strings.TrimPrefix(d, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}
