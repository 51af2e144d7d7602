package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskResizeCmd(g *globals) *cobra.Command {
	var asJSON, noWait bool
	cmd := &cobra.Command{
		Use:     "resize NAME SIZE [--no-wait] [--json]",
		Example: "  cabin disk resize data 20G",
		Short:   "Grow or shrink a disk image",
		Long: "resize makes the disk image NAME SIZE bytes (K, M, G, T allowed), its ext4\n" +
			"filesystem with it, never below the filesystem's minimum. It follows the\n" +
			"operation to its end unless --no-wait, which prints its command uuid.",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("%s takes a disk name and a size", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(args[1])
			if err != nil {
				return err
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			name := args[0]
			client := concierge.NewVmConciergeClient(conn)
			resp, err := client.ResizeDiskImage(cmd.Context(), &concierge.ResizeDiskImageRequest{CryptohomeId: g.owner, VmName: name, DiskSize: size})
			if err != nil {
				return fmt.Errorf("resize disk %s: %w", name, err)
			}
			if resp.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS && resp.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_RESIZED {
				return fmt.Errorf("resize disk %s: %s: %s", name, diskStatusWord(resp.GetStatus()), orUnknown(resp.GetFailureReason()))
			}
			if noWait || resp.GetCommandUuid() == "" {
				if asJSON {
					return writeJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.GetCommandUuid())
				return nil
			}
			st, err := waitDiskOp(cmd.Context(), client, resp.GetCommandUuid(), newProgress(cmd.ErrOrStderr(), "resize "+name, asJSON))
			if err != nil {
				return fmt.Errorf("resize disk %s: %w", name, err)
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), st); err != nil {
					return err
				}
			}
			if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_RESIZED {
				return outcomeError("resize disk "+name, st)
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "resized %s to %s\n", name, formatBytes(int64(size)))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the operation's final DiskImageStatusResponse as JSON")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the command uuid and return")
	return cmd
}
