package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list [--json]",
		Aliases: []string{"ls"},
		Short:   "List the VMs",
		Long: "list shows the VMs cabind manages for --owner, starting or running, as a table.\n" +
			"With --json it prints one JSON array of vm_tools.concierge.ExtendedVmInfo\n" +
			"objects in protojson (proto field names, all fields, 64-bit numbers as\n" +
			"strings, enums by name); [] when there are none.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVMList(cmd, g, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func runVMList(cmd *cobra.Command, g *globals, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).ListVms(cmd.Context(), &concierge.ListVmsRequest{OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("list VMs: %s", orUnknown(resp.GetFailureReason()))
	}
	if asJSON {
		return writeJSONArray(cmd.OutOrStdout(), resp.GetVms())
	}
	return writeVMTable(cmd.OutOrStdout(), resp.GetVms())
}
