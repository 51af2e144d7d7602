package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskStatusCmd(g *globals) *cobra.Command {
	var asJSON, wait bool
	cmd := &cobra.Command{
		Use:     "status COMMAND_UUID [--wait] [--json]",
		Example: "  cabin disk status 3f2c9a8e-1b4d-4c6e-9a7f-2d5e8b1c0f43 --wait",
		Short:   "Show a disk operation's status",
		Long: "status shows the status and progress of the disk operation (resize, export,\n" +
			"import) with the command uuid its start printed. --wait follows it to its end.",
		Args: commandArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			client := concierge.NewVmConciergeClient(conn)
			var st *concierge.DiskImageStatusResponse
			if wait {
				st, err = waitDiskOp(cmd.Context(), client, args[0], newProgress(cmd.ErrOrStderr(), args[0], asJSON))
			} else {
				st, err = client.DiskImageStatus(cmd.Context(), &concierge.DiskImageStatusRequest{CommandUuid: args[0]})
			}
			if err != nil {
				return fmt.Errorf("disk operation %s: %w", args[0], err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			line := fmt.Sprintf("%s %s %d%%", st.GetCommandUuid(), diskStatusWord(st.GetStatus()), st.GetProgress())
			if r := st.GetFailureReason(); r != "" {
				line += ": " + r
			}
			fmt.Fprintln(cmd.OutOrStdout(), line)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print concierge's DiskImageStatusResponse as JSON")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the operation to its end, showing its progress")
	return cmd
}

// waitDiskOp polls the operation uuid until it ends, showing its
// progress on p.
func waitDiskOp(ctx context.Context, client concierge.VmConciergeClient, uuid string, p *progress) (*concierge.DiskImageStatusResponse, error) {
	for {
		st, err := client.DiskImageStatus(ctx, &concierge.DiskImageStatusRequest{CommandUuid: uuid})
		if err != nil {
			return nil, err
		}
		if st.GetStatus() != concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS {
			if st.GetStatus() == concierge.DiskImageStatus_DISK_STATUS_RESIZED || st.GetStatus() == concierge.DiskImageStatus_DISK_STATUS_CREATED {
				p.done()
			}
			return st, nil
		}
		p.set(int(st.GetProgress()))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
