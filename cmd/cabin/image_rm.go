package main

import (
	"fmt"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newImageRemoveCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm REF...",
		Example: "  cabin image rm busybox",
		Aliases: []string{"remove"},
		Short:   "Remove images or tags from cabind's store",
		Long: "rm untags each tag REF or, given a digest, removes the image with all its tags;\n" +
			"an image whose last tag goes is removed too. An image a container uses stays.\n" +
			"Each tag and digest removed is printed on a line.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s takes one or more image references", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			c := cabinv1.NewOciImagesClient(conn)
			for _, ref := range args {
				resp, err := c.Remove(cmd.Context(), &cabinv1.RemoveOciImageRequest{Reference: ref})
				if err != nil {
					return fmt.Errorf("remove %s: %w", ref, err)
				}
				for _, r := range resp.GetRemoved() {
					fmt.Fprintln(cmd.OutOrStdout(), "removed", r)
				}
			}
			return nil
		},
	}
	return cmd
}
