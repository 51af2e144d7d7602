package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImageBuildCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use: "build [--force]",
		Example: "  cabin image build\n" +
			"  cabin image build --force",
		Short: "Build the guest image, or reuse the cached one",
		Long: "build has cabind make the default guest kernel and initramfs unless an\n" +
			"up-to-date image is cached. Steps go to standard error, downloads with a\n" +
			"progress bar on a terminal and a line at every tenth otherwise; the result,\n" +
			"one line, to standard output.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runImageBuild(cmd, g, force)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "rebuild even when the cached image is current")
	return cmd
}

func runImageBuild(cmd *cobra.Command, g *globals, force bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := cabinv1.NewImagesClient(conn).Build(cmd.Context(), &cabinv1.BuildImageRequest{Force: force})
	if err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	var (
		image *cabinv1.ImageInfo
		bar   *progress // the current step's download
	)
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("build image: %w", err)
		}
		switch {
		case p.GetTotalBytes() > 0:
			if bar == nil {
				bar = newDownloadBar(cmd.ErrOrStderr(), p.GetStep(), p.GetTotalBytes(), false)
			}
			bar.setBytes(p.GetDoneBytes())
		case p.GetDoneBytes() > 0:
			// A download of unknown size: its step line says enough.
		case p.GetStep() != "":
			if bar != nil {
				bar.done()
				bar = nil
			}
			fmt.Fprintln(cmd.ErrOrStderr(), p.GetStep())
		}
		if p.GetImage() != nil {
			image = p.GetImage()
		}
	}
	if image == nil {
		return errors.New("build image: the daemon ended the build without describing the image")
	}
	fmt.Fprintln(cmd.OutOrStdout(), imageSummary(image))
	return nil
}

// imageSummary is the one-line result of a build.
func imageSummary(im *cabinv1.ImageInfo) string {
	how := "cached"
	if im.GetBuilt() {
		how = "built"
	}
	return fmt.Sprintf("image %s: kernel %s, initramfs %s", how, orDash(im.GetKernelVersion()), formatBytes(im.GetInitrdBytes()))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
