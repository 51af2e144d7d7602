package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMStopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a VM",
		Long: "stop asks cabind to stop the VM NAME and returns once its process is gone.\n" +
			"The daemon asks the guest to shut down first, so this can take a while.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMStop(cmd, g, args[0])
		},
	}
}

func runVMStop(cmd *cobra.Command, g *globals, name string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).StopVm(cmd.Context(), &concierge.StopVmRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("stop %s: %s", name, orUnknown(resp.GetFailureReason()))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "stopped %s\n", name)
	return nil
}
