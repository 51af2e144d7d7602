package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMInfoCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info NAME [--json]",
		Short: "Show one VM",
		Long: "info shows the VM NAME. With --json it prints one\n" +
			"vm_tools.concierge.ExtendedVmInfo object, the same shape as an element of\n" +
			"`cabin vm list --json`.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMInfo(cmd, g, args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func runVMInfo(cmd *cobra.Command, g *globals, name string, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).GetVmInfo(cmd.Context(), &concierge.GetVmInfoRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("info %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("no VM named %s", name)
	}
	// GetVmInfoResponse names neither the VM nor its owner; wrapping it as
	// list does gives both outputs one shape.
	vm := &concierge.ExtendedVmInfo{
		Name:    name,
		OwnerId: g.owner,
		VmInfo:  resp.GetVmInfo(),
		Status:  resp.GetVmInfo().GetStatus(),
	}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), vm)
	}
	return writeVMInfo(cmd.OutOrStdout(), vm)
}
