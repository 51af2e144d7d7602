package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMStopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "stop NAME",
		Example: "  cabin vm stop dev",
		Short:   "Stop a VM",
		Long: "stop asks cabind to stop the VM NAME and returns once its process is gone.\n" +
			"The daemon asks the guest to shut down first, so this can take a while.\n" +
			"Stopping a VM that does not exist is an error, as for the other verbs.",
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
	client := concierge.NewVmConciergeClient(conn)
	// Concierge's StopVm succeeds for a VM that does not exist (Chrome
	// treats stopped and gone alike); a person asking to stop one by name
	// has most likely mistyped it. GetVmInfo tells.
	info, err := client.GetVmInfo(cmd.Context(), &concierge.GetVmInfoRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if !info.GetSuccess() {
		return fmt.Errorf("no VM named %s", name)
	}
	resp, err := client.StopVm(cmd.Context(), &concierge.StopVmRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("stop %s: %s", name, orUnknown(resp.GetFailureReason()))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "stopped %s\n", name)
	return nil
}
