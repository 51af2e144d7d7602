package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Example: "  cabin disk rm data",
		Aliases: []string{"destroy"},
		Short:   "Remove a disk image",
		Long: "rm removes the disk image NAME, stopping first the VM of that name, which\n" +
			"holds it. Removing an image that is not there is an error.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			name := args[0]
			resp, err := concierge.NewVmConciergeClient(conn).DestroyDiskImage(cmd.Context(),
				&concierge.DestroyDiskImageRequest{CryptohomeId: g.owner, VmName: name})
			if err != nil {
				return fmt.Errorf("remove disk %s: %w", name, err)
			}
			switch resp.GetStatus() {
			case concierge.DiskImageStatus_DISK_STATUS_DESTROYED:
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
				return nil
			case concierge.DiskImageStatus_DISK_STATUS_DOES_NOT_EXIST:
				return fmt.Errorf("no disk image named %s", name)
			}
			return fmt.Errorf("remove disk %s: %s: %s", name, diskStatusWord(resp.GetStatus()), orUnknown(resp.GetFailureReason()))
		},
	}
}
