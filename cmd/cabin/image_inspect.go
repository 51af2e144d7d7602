package main

import (
	"fmt"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImageInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect REF",
		Example: "  cabin image inspect busybox",
		Short:   "Show an image's config, layers and sizes as JSON",
		Long: "inspect prints cabin.v1.OciImageDetails of REF (a tag, a digest or\n" +
			"NAME@sha256:...): digest, tags, sizes, platform, how the image asks to be run\n" +
			"(entrypoint, cmd, env, user, working dir, exposed ports, labels) and its layers.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s takes one image reference", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			det, err := cabinv1.NewOciImagesClient(conn).Inspect(cmd.Context(), &cabinv1.InspectOciImageRequest{Reference: args[0]})
			if err != nil {
				return fmt.Errorf("inspect %s: %w", args[0], err)
			}
			return writeJSON(cmd.OutOrStdout(), det)
		},
	}
}
