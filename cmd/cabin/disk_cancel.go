package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "cancel COMMAND_UUID",
		Example: "  cabin disk cancel 3f2c9a8e-1b4d-4c6e-9a7f-2d5e8b1c0f43",
		Short:   "Cancel a disk operation",
		Long: "cancel stops the disk operation with the command uuid and returns once it\n" +
			"has cleaned up: a cancelled export or import leaves no file behind.",
		Args: commandArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := concierge.NewVmConciergeClient(conn).CancelDiskImageOperation(cmd.Context(),
				&concierge.CancelDiskImageRequest{CommandUuid: args[0]})
			if err != nil {
				return fmt.Errorf("cancel %s: %w", args[0], err)
			}
			if !resp.GetSuccess() {
				return fmt.Errorf("cancel %s: %s", args[0], orUnknown(resp.GetFailureReason()))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cancelled %s\n", args[0])
			return nil
		},
	}
}
