package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImagePullCmd(g *globals) *cobra.Command {
	var quiet, asJSON bool
	cmd := &cobra.Command{
		Use:     "pull [--quiet] [--json] REF",
		Example: "  cabin image pull busybox:latest",
		Short:   "Pull an image from a registry",
		Long: "pull has cabind fetch REF (NAME[:TAG] or NAME@sha256:...) from its registry,\n" +
			"the linux/amd64 image of a multi-platform one, and add it to the image store.\n" +
			"Progress goes to standard error; the digest and tags, one line, to standard output.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s takes one image reference", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImagePull(cmd, g, args[0], quiet, asJSON)
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image (cabin.v1.OciImage) as JSON")
	return cmd
}

func runImagePull(cmd *cobra.Command, g *globals, ref string, quiet, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := cabinv1.NewOciImagesClient(conn).Pull(cmd.Context(), &cabinv1.PullOciImageRequest{Reference: ref})
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	bar := newProgress(cmd.ErrOrStderr(), "pull "+ref, quiet)
	var img *cabinv1.OciImage
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("pull %s: %w", ref, err)
		}
		if p.GetTotalBytes() > 0 {
			bar.set(int(p.GetDoneBytes() * 100 / p.GetTotalBytes()))
		}
		if p.GetImage() != nil {
			img = p.GetImage()
		}
	}
	if img == nil {
		return fmt.Errorf("pull %s: the daemon ended the pull without describing the image", ref)
	}
	bar.done()
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), img)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", img.GetDigest(), strings.Join(img.GetTags(), " "))
	return nil
}
